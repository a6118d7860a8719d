#!/usr/bin/env bash
# README.md as a test: every SQL example in the README runs against a fresh database, and what
# psql prints for it is compared with what the README shows. Run by pg_test/test.sh after the
# pgTAP suites; it can also run on its own once flowgate and flowgate-testd are built.
#
#   pg_test/readme.sh          run, print TAP lines and a count, exit 1 on any difference
#   pg_test/readme.sh --show   the same, and print every statement's actual output as `-->` lines,
#                              ready to paste into the README
#   pg_test/readme.sh --keep   leave the cluster running afterwards, to look into it (psql -h /tmp
#                              -p 5594 -U postgres flowgate_readme); the next run starts afresh
#
# The convention, for whoever edits the README:
#   - Every fenced block names its language. ```sql blocks run. Every other language is skipped
#     by design: ```sh (shell commands), ```yaml (CI configuration), ```text (file trees, output
#     samples of HTTP APIs, statements that cannot run here). A fence without a language fails the
#     run, so no block is skipped by accident.
#   - One psql session per README section (each ## or ### heading starts one): the blocks of a
#     section share the session (SET ROLE, request.jwt.claims, settings), so a walkthrough spread
#     over several blocks runs as one; the next section starts afresh as the extension owner
#     (postgres). Sections run in document order against one database, so a later section sees
#     what earlier ones left. Statements run in autocommit, as typed into psql.
#   - A statement is the SQL up to a `;` outside quotes, dollar quotes and comments. Plain `--`
#     comments are for the reader. The lines starting with `-->` right after a statement are its
#     expected output: what psql prints for it in its default (aligned) format, without the
#     row-count footer; a result of one column is shown without its header and ruler; an error as
#     `ERROR:  ...` with its DETAIL/HINT lines (CONTEXT lines are not shown). A statement with no
#     `-->` lines must run without an error; what it prints is not compared.
#   - Output is compared line by line after normalising both sides: blank lines dropped, leading
#     and trailing blanks dropped, runs of blanks collapsed to one, table rulers (---+---) reduced
#     to `---`, and the volatile values listed in MASKS (below) replaced by placeholders: uuids,
#     timestamps and dates, the year in capacity request ids (CR-2026-…), JSON durations
#     ("duration_ms": …) and intervals with fractions of a second. So the README shows real values
#     and they compare equal to any other. Anything else that varies from run to run (a column of
#     durations, a random password) is better left out of the SELECT.
#   - 127.0.0.1:5595 (the sandbox of pg_test/setup.sh) is this script's own flowgate-testd: the
#     address is rewritten to it in what is sent, and back in what comes back.
#   - The database: a fresh cluster in $FLOWGATE_README_DIR (/var/tmp/flowgate/readme, port
#     $FLOWGATE_README_PORT, 5594) made by lib.sh's cluster_start, so with a local
#     flowgate.tenant_key_passphrase, pg_cron preloaded and no flowgate worker; extensions pg_cron,
#     pgmq, pgcrypto and flowgate; no other role: what the README needs it creates itself. Every
#     session connects as postgres, the extension owner.
#   - pg_cron jobs never run here: a trigger keeps every row of cron.job inactive, so what
#     flowgate.install_schedules() registers stays registered, and the walkthroughs advance only
#     by the statements they show.
#   - The sandbox: flowgate-testd on $FLOWGATE_README_TESTD_PORT (5593); the script refuses to
#     start when something already answers there. Both are stopped when the script ends.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

README=${FLOWGATE_README_FILE:-$FLOWGATE_ROOT/README.md}   # another file: for trying the checker itself
README_DIR=${FLOWGATE_README_DIR:-/var/tmp/flowgate/readme}
README_PORT=${FLOWGATE_README_PORT:-5594}
README_DB=flowgate_readme
README_TESTD_PORT=${FLOWGATE_README_TESTD_PORT:-5593}
SHOW=0 KEEP=0
for arg in "$@"; do
  case "$arg" in
    --show) SHOW=1 ;;
    --keep) KEEP=1 ;;
    *) die "usage: pg_test/readme.sh [--show] [--keep]" ;;
  esac
done

[ -x "$TESTD_BIN" ] || die "$TESTD_BIN is missing: build it first (pg_test/test.sh does, or cargo build --release in pg_test/testd)"
if curl -fs "http://127.0.0.1:$README_TESTD_PORT/_stats" >/dev/null 2>&1; then
  die "port $README_TESTD_PORT already answers (a flowgate-testd left running? set FLOWGATE_README_TESTD_PORT)"
fi

work=$(mktemp -d /tmp/flowgate-readme.XXXXXX)
README_TESTD_PID=
cleanup() {
  if [ -n "$README_TESTD_PID" ]; then kill "$README_TESTD_PID" 2>/dev/null || true; fi
  [ "$KEEP" -eq 1 ] || cluster_stop "$README_DIR"
  rm -rf "$work"
}
trap cleanup EXIT

# ---- The parser and the comparer (Perl: it is there wherever Postgres and pg_prove are) -------
cat > "$work/readme.pl" <<'PERL'
use strict;
use warnings;
use utf8;
binmode STDOUT, ':encoding(UTF-8)';

# Volatile values, masked on both sides before comparing: [pattern, placeholder].
my @MASKS = (
  [qr/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/, sub { '<uuid>' }],
  # timestamps as Postgres and jsonb print them: 2026-12-01 10:00:00.123+00, 2026-12-01T10:00:00.123456+00:00
  [qr/\b\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d(?::?\d\d)?)?/, sub { '<timestamp>' }],
  [qr/\b\d{4}-\d\d-\d\d\b/, sub { '<date>' }],
  # capacity request ids carry the year they were created in
  [qr/\bCR-\d{4}-/, sub { 'CR-<year>-' }],
  # durations: "duration_ms": 1.338 (and *elapsed_ms, *latency_ms), intervals with fractions of a second
  [qr/("[a-z_]*(?:duration|elapsed|latency)_ms"):\s*-?\d+(?:\.\d+)?/, sub { "$_[0]: <ms>" }],
  [qr/\b\d+:\d\d:\d\d\.\d+\b/, sub { '<interval>' }],
);

sub norm_line {
  my ($l) = @_;
  for my $m (@MASKS) { my ($re, $to) = @$m; $l =~ s/$re/$to->($1)/ge; }
  $l =~ s/^\s+|\s+$//g;
  $l =~ s/\s+/ /g;
  $l = '---' if $l =~ /^-+(?:\+-+)*$/;
  return $l;
}
sub norm { return grep { $_ ne '' } map { norm_line($_) } @_; }

sub slurp { my ($f) = @_; open my $fh, '<:encoding(UTF-8)', $f or die "$f: $!"; local $/; my $s = <$fh>; close $fh; return $s; }
sub spew { my ($f, $s) = @_; open my $fh, '>:encoding(UTF-8)', $f or die "$f: $!"; print $fh $s; close $fh; }

# Split SQL text into complete statements; returns (statements, rest). Comments are dropped
# from the statements (psql would send them; they are for the reader).
sub split_sql {
  my ($text) = @_;
  my (@out, $cur);
  $cur = '';
  my $i = 0; my $n = length $text;
  while ($i < $n) {
    my $c = substr($text, $i, 1);
    my $two = substr($text, $i, 2);
    if ($two eq '--') { my $e = index($text, "\n", $i); $e = $n if $e < 0; $i = $e; next; }
    if ($two eq '/*') { my $e = index($text, '*/', $i + 2); die "unterminated /* comment\n" if $e < 0; $i = $e + 2; next; }
    if ($c eq "'" || $c eq '"') {
      my $e = $i + 1;
      while (1) {
        $e = index($text, $c, $e);
        die "unterminated $c quote\n" if $e < 0;
        if (substr($text, $e + 1, 1) eq $c) { $e += 2; next; }
        last;
      }
      $cur .= substr($text, $i, $e + 1 - $i); $i = $e + 1; next;
    }
    if ($c eq '$' && substr($text, $i) =~ /^(\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)/) {
      my $tag = $1;
      my $e = index($text, $tag, $i + length $tag);
      die "unterminated $tag quote\n" if $e < 0;
      $cur .= substr($text, $i, $e + length($tag) - $i); $i = $e + length $tag; next;
    }
    if ($c eq ';') {
      $cur .= ';';
      $cur =~ s/^\s+//; $cur =~ s/[ \t]+\n/\n/g;
      push @out, $cur; $cur = ''; $i++; next;
    }
    $cur .= $c; $i++;
  }
  return (\@out, $cur);
}

sub one_line { my ($s) = @_; $s =~ s/\s+/ /g; $s =~ s/^ | $//g; $s = substr($s, 0, 90) . '…' if length $s > 91; return $s; }

# parse README WORK SANDBOX_PORT: write WORK/session-NN.sql, WORK/steps, WORK/expect-N, WORK/blocks
sub parse {
  my ($readme, $work, $port) = @_;
  my @lines = split /\n/, slurp($readme), -1;
  my ($section, $in, $lang, $indent, $start) = ('(top)', 0, '', '', 0);
  my (%skipped, @sessions, @steps, $sql, $last, @block);
  my $sess;   # index into @sessions of the current section's session, or undef
  my $blocks_run = 0;
  my $fail = sub { die "$readme:$_[0]: $_[1]\n"; };
  for my $ln (0 .. $#lines) {
    my $l = $lines[$ln];
    my $no = $ln + 1;
    if (!$in) {
      if ($l =~ /^(#{2,3})\s+(.*?)\s*$/) { $section = $2; $section =~ s/`//g; $sess = undef; next; }
      if ($l =~ /^(\s*)```(.*?)\s*$/) {
        ($indent, $lang, $start, $in) = ($1, $2, $no, 1);
        $fail->($no, 'a fenced block without a language (```sql runs; ```sh, ```yaml, ```text are skipped)') if $lang eq '';
        if ($lang eq 'sql') {
          if (!defined $sess) { push @sessions, { section => $section, script => '' }; $sess = $#sessions; }
          $sql = ''; $last = undef; $blocks_run++;
        } else { $skipped{$lang}++; }
      }
      next;
    }
    if ($l =~ /^\s*```\s*$/) {
      if ($lang eq 'sql' && $sql =~ /\S/) {
        my ($st, $rest) = eval { split_sql($sql) };
        $fail->($no, "in the block from line $start: $@") if $@;
        $fail->($no, "in the block from line $start: statement not ended with ';': " . one_line($rest)) if $rest =~ /\S/;
      }
      $in = 0; next;
    }
    next if $lang ne 'sql';
    my $body = $l;
    $body =~ s/^\Q$indent\E// if $indent ne '';
    $fail->($no, 'an expected-output line (-->) must start where its fence starts') if $body =~ /^\s+-->/;
    if ($body =~ /^-->(?: (.*))?$/) {
      my $exp = defined $1 ? $1 : '';
      if ($sql =~ /\S/) {
        my ($st, $rest) = eval { split_sql($sql) };
        $fail->($no, $@) if $@;
        $fail->($no, "expected output (-->) after an unfinished statement: " . one_line($rest)) if $rest =~ /\S/;
        for my $s (@$st) {
          push @steps, { session => $sess, section => $section, sql => $s, line => $no, expect => undef };
          $last = $steps[-1];
        }
        $sql = '';
      }
      $fail->($no, 'expected output (-->) with no statement before it in its block') unless defined $last;
      push @{ $last->{expect} ||= [] }, $exp;
      next;
    }
    if ($sql =~ /\S/ || $body =~ /\S/) {
      $sql .= "$body\n";
      # complete statements are steps as soon as they end, so `-->` lines attach to the last one
      my ($st, $rest) = eval { split_sql($sql) };
      if (!$@ && @$st) {
        for my $s (@$st) {
          push @steps, { session => $sess, section => $section, sql => $s, line => $no, expect => undef };
          $last = $steps[-1];
        }
        $sql = $rest;
        $sql = '' unless $sql =~ /\S/;
      }
    }
  }
  $fail->($start, 'unterminated fenced block') if $in;
  my $k = 0;
  for my $s (@steps) {
    $k++;
    (my $exec = $s->{sql}) =~ s/127\.0\.0\.1:5595\b/127.0.0.1:$port/g;
    $sessions[$s->{session}]{script} .= "\\echo '\@\@readme-step $k'\n$exec\n";
    spew("$work/expect-$k", join("\n", @{ $s->{expect} }) . "\n") if defined $s->{expect};
  }
  my $steps_txt = '';
  $k = 0;
  for my $s (@steps) {
    $k++;
    $steps_txt .= join("\t", $k, $s->{session}, $s->{line}, defined $s->{expect} ? 1 : 0, $s->{section}, one_line($s->{sql})) . "\n";
  }
  spew("$work/steps", $steps_txt);
  my $pre = "\\set QUIET on\n\\pset footer off\n\\set SHOW_CONTEXT never\n\\set VERBOSITY default\n";
  for my $i (0 .. $#sessions) {
    spew(sprintf("%s/session-%02d.sql", $work, $i), $pre . $sessions[$i]{script});
  }
  spew("$work/blocks", join("\t", $blocks_run, map { "$_=$skipped{$_}" } sort keys %skipped) . "\n");
}

# compare WORK SANDBOX_PORT SHOW
sub compare {
  my ($work, $port, $show) = @_;
  my (%out);
  for my $f (glob "$work/session-*.out") {
    my $cur;
    for my $l (split /\n/, slurp($f)) {
      if ($l =~ /^\@\@readme-step (\d+)$/) { $cur = $1; $out{$cur} = []; next; }
      next unless defined $cur;
      $l =~ s/^psql:[^:]*:\d+: //;
      $l =~ s/127\.0\.0\.1:$port\b/127.0.0.1:5595/g;
      push @{ $out{$cur} }, $l;
    }
  }
  my ($n, $failed, $compared) = (0, 0, 0);
  for my $row (split /\n/, slurp("$work/steps")) {
    my ($k, $sess, $line, $has, $section, $text) = split /\t/, $row, 6;
    $n++;
    my @got = defined $out{$k} ? @{ $out{$k} } : ();
    pop @got while @got && $got[-1] =~ /^\s*$/;
    # a result of one column: no header, no ruler (after the notices that came before it)
    my $h = 0;
    $h++ while $h < @got && $got[$h] =~ /^(?:NOTICE|WARNING|INFO|DETAIL|HINT):/;
    if (@got >= $h + 2 && $got[$h + 1] =~ /^-+$/ && $got[$h] !~ /^(?:ERROR|FATAL):/) { splice @got, $h, 2; }
    my @err = grep { /^(?:ERROR|FATAL|PANIC):/ } @got;
    my ($ok, @diag);
    if (!defined $out{$k}) {
      $ok = 0; @diag = ('no output at all: psql stopped before this statement');
    } elsif ($has) {
      $compared++;
      my @want = norm(split /\n/, slurp("$work/expect-$k"));
      my @have = norm(@got);
      $ok = join("\n", @want) eq join("\n", @have);
      @diag = ('README.md (masked):', (map { "    $_" } @want), 'psql printed (masked):', (map { "    $_" } @have)) unless $ok;
    } else {
      $ok = !@err;
      @diag = ('an error where the README shows none:', map { "    $_" } @got) unless $ok;
    }
    $failed++ unless $ok;
    printf "%s %d - README %s: %s\n", ($ok ? 'ok' : 'not ok'), $n, $section, $text;
    print map { "#   $_\n" } @diag;
    print map { "#   line $line: --> $_\n" } ($show ? @got : ()) if $show;
  }
  print "1..$n\n";
  my ($blocks, @skip) = split /\t/, (split /\n/, slurp("$work/blocks"))[0];
  printf "# README.md: %d statements in %d sql blocks checked (%d with their output compared, %d for running without an error); %s\n",
    $n, $blocks, $compared, $n - $compared, (@skip ? 'skipped by design: ' . join(', ', map { my ($l, $c) = split /=/; "$c $l" } @skip) . ' blocks' : 'no block skipped');
  printf "# %d of %d differ\n", $failed, $n if $failed;
  exit($failed ? 1 : 0);
}

my $mode = shift @ARGV;
if ($mode eq 'parse') { parse(@ARGV); }
elsif ($mode eq 'compare') { compare(@ARGV); }
else { die "usage: readme.pl parse|compare ...\n"; }
PERL

perl "$work/readme.pl" parse "$README" "$work" "$README_TESTD_PORT" || die "README.md does not follow the convention (above)"

# ---- A fresh cluster and the sandbox ----------------------------------------------------------
cluster_stop "$README_DIR"
"${SUDO[@]}" rm -rf "$README_DIR"
cluster_start "$README_DIR" "$README_PORT" "$README_DB"
psql_at "$README_PORT" "$README_DB" -q <<'SQL'
CREATE EXTENSION pg_cron;
CREATE EXTENSION pgmq;
CREATE EXTENSION pgcrypto;
CREATE EXTENSION flowgate;
-- No pg_cron job runs during the walkthroughs: every job is kept inactive.
CREATE FUNCTION public.readme_keep_cron_jobs_inactive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.active := false; RETURN NEW; END $$;
CREATE TRIGGER readme_keep_cron_jobs_inactive BEFORE INSERT OR UPDATE ON cron.job
  FOR EACH ROW EXECUTE FUNCTION public.readme_keep_cron_jobs_inactive();
SQL
"$TESTD_BIN" serve "$README_TESTD_PORT" >"$work/testd.log" 2>&1 &
README_TESTD_PID=$!
for _ in $(seq 1 50); do
  kill -0 "$README_TESTD_PID" 2>/dev/null || die "flowgate-testd exited (is port $README_TESTD_PORT taken? set FLOWGATE_README_TESTD_PORT)"
  curl -fs "http://127.0.0.1:$README_TESTD_PORT/_stats" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$README_TESTD_PORT/_stats" >/dev/null 2>&1 || die "flowgate-testd did not start on port $README_TESTD_PORT"

# ---- Run every section's session, in document order, then compare ------------------------------
# psql as a reader's would run: no psqlrc (-X), no PGOPTIONS from the caller's environment, and
# no session allowed to hang the suite (5 minutes each; the whole README runs in seconds).
for s in "$work"/session-*.sql; do
  (cd / && PGOPTIONS='' timeout 300 psql -X -q -h "$SOCKET_DIR" -p "$README_PORT" -U postgres -d "$README_DB" -f "$s") >"${s%.sql}.out" 2>&1 || true
done
perl "$work/readme.pl" compare "$work" "$README_TESTD_PORT" "$SHOW"
