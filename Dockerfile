# flowgate on a Supabase-compatible Postgres 15 (the image ships pg_cron, pg_net and pgmq).
#   docker build -t flowgate-postgres .
#   docker run -e POSTGRES_PASSWORD=postgres -p 5432:5432 flowgate-postgres
#   psql ... -c 'CREATE EXTENSION flowgate CASCADE;'
# The build stage uses the same script and pinned versions as the README's setup command. It
# builds the checked-out tree: for a release, `git checkout v<version>` first (tags v0.1.0, ...).
# The image gets the version's install script, every released one (sql/released/: a dump
# restores into the release it was taken at) and every upgrade script (sql/flowgate--A--B.sql),
# so a database created at an earlier release moves up with ALTER EXTENSION flowgate UPDATE.

ARG SUPABASE_POSTGRES_IMAGE=supabase/postgres:15.8.1.085

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN pg_test/setup.sh --deps-only \
 && cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config \
 && mkdir -p /out/lib /out/extension \
 && cp target/release/flowgate-pg15/usr/lib/postgresql/15/lib/flowgate.so /out/lib/ \
 && cp target/release/flowgate-pg15/usr/share/postgresql/15/extension/flowgate* /out/extension/ \
 && cp sql/released/flowgate--*.sql /out/extension/

FROM ${SUPABASE_POSTGRES_IMAGE}
COPY --from=build /out /tmp/flowgate
RUN set -eu; \
    PG_CONFIG=$(command -v pg_config || ls /usr/lib/postgresql/bin/pg_config /usr/lib/postgresql/15/bin/pg_config 2>/dev/null | head -n1); \
    install -m 0755 /tmp/flowgate/lib/flowgate.so "$("$PG_CONFIG" --pkglibdir)/"; \
    install -m 0644 /tmp/flowgate/extension/* "$("$PG_CONFIG" --sharedir)/extension/"; \
    rm -rf /tmp/flowgate
