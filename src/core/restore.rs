//! Restores: whether the statement running is a restore loading flowgate's tables, so the
//! triggers that derive or guard state step aside for rows a dump brings.

use std::ffi::CStr;

use pgrx::pg_sys;

use super::store::relation_id;

/// The table the statement this backend is running, as the client sent it, copies into or
/// out of: `COPY schema.table ...`, as (schema, table), unquoted names folded to lower case.
/// `COPY` is how pg_restore (and psql, for a plain dump) loads every table. A restore brings
/// rows with the state derived from them in the same dump, in an
/// order of its own, so triggers that derive or guard state step aside for it. None for any
/// other statement, a `COPY` of a query, or a string of several statements that does not
/// begin with such a `COPY`.
pub fn copy_target() -> Option<(String, String)> {
    // SAFETY: debug_query_string is the backend's current client statement, a NUL-terminated
    // string owned by Postgres for the duration of the statement, or NULL (a background job).
    let text = unsafe {
        let q = pg_sys::debug_query_string;
        if q.is_null() {
            return None;
        }
        CStr::from_ptr(q)
    };
    parse_copy_target(&text.to_string_lossy())
}

/// [`copy_target`] of a statement's text.
fn parse_copy_target(sql: &str) -> Option<(String, String)> {
    let s = sql.trim_start();
    let rest = s.get(4..).filter(|_| s[..4].eq_ignore_ascii_case("copy"))?;
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let (schema, rest) = identifier(rest.trim_start())?;
    let (table, rest) = identifier(rest.strip_prefix('.')?)?;
    rest.chars()
        .next()
        .is_none_or(|c| c.is_ascii_whitespace() || c == '(' || c == ';')
        .then_some((schema, table))
}

/// One SQL identifier at the start of `s` (quoted, with `""` inside, or unquoted and folded to
/// lower case) and what follows it.
fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
            } else if quoted[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
            } else {
                return (!name.is_empty()).then(|| (name, &quoted[i + 1..]));
            }
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    let name = &s[..end];
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        .then(|| (name.to_ascii_lowercase(), &s[end..]))
}

/// Whether row security does not apply to the calling role on `schema.table` (its owner, a
/// superuser, a role with BYPASSRLS), as for pg_restore. A role row security applies to can
/// also run a `COPY` (`COPY (INSERT ... RETURNING) TO STDOUT` writes rows under its policies),
/// so the statement alone decides nothing.
fn exempt_from_row_security(schema: &CStr, table: &CStr) -> bool {
    let Some(rel) = relation_id(schema, table) else {
        return false;
    };
    // SAFETY: check_enable_rls with noError reads the relation's flags and the role's
    // attributes only. GetOuterUserId() is the calling role outside any SECURITY DEFINER
    // function (a trigger's caller).
    unsafe {
        pg_sys::check_enable_rls(rel, pg_sys::GetOuterUserId(), true)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

/// Whether a restore is loading a table of `schema` now: the statement is a `COPY` into one of
/// its tables ([`copy_target`]) by a role row security does not apply to on `schema.table`.
pub fn restore_loading(schema: &CStr, table: &CStr) -> bool {
    let in_schema = copy_target().is_some_and(|(s, _)| s.as_bytes() == schema.to_bytes());
    in_schema && exempt_from_row_security(schema, table)
}

/// Whether a restore is loading `schema.table` itself now (a `COPY` into it, by a role row
/// security does not apply to on it).
pub fn restore_loading_into(schema: &CStr, table: &CStr) -> bool {
    let into = copy_target().is_some_and(|(s, t)| {
        s.as_bytes() == schema.to_bytes() && t.as_bytes() == table.to_bytes()
    });
    into && exempt_from_row_security(schema, table)
}

#[cfg(test)]
mod unit_tests {
    use super::parse_copy_target;

    fn target(sql: &str) -> Option<(String, String)> {
        parse_copy_target(sql)
    }

    #[test]
    fn the_target_of_a_copy_as_pg_dump_writes_it() {
        let orders = Some(("app".to_owned(), "orders".to_owned()));
        assert_eq!(
            target("COPY app.orders (order_id, customer_id) FROM stdin;"),
            orders
        );
        assert_eq!(target("\n  copy APP.Orders FROM stdin"), orders);
        assert_eq!(target("COPY \"app\".\"orders\" FROM stdin;"), orders);
        assert_eq!(target("COPY app.orders;"), orders);
        assert_eq!(
            target("COPY \"my \"\"schema\"\"\".t FROM stdin"),
            Some(("my \"schema\"".to_owned(), "t".to_owned()))
        );
        assert_eq!(
            target("COPY app.orders_x FROM stdin"),
            Some(("app".to_owned(), "orders_x".to_owned()))
        );
    }

    #[test]
    fn anything_else_has_no_target() {
        for sql in [
            "",
            "COPY",
            "COPYapp.orders FROM stdin",
            "COPY (SELECT 1) TO STDOUT; INSERT INTO app.orders VALUES (1)",
            "COPY orders FROM stdin",
            "COPY app. orders FROM stdin",
            "COPY app.\"orders FROM stdin",
            "COPY app.\"\" FROM stdin",
            "COPY 1app.orders FROM stdin",
            "INSERT INTO app.orders VALUES (1); COPY app.orders FROM stdin",
            "SELECT 1",
        ] {
            assert_eq!(target(sql), None, "{sql:?}");
        }
    }
}
