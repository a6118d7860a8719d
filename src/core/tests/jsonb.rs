//! `#[pg_test]`s of the jsonb builder and reader (`core::jsonb`) against Postgres' own text
//! conversions: the same values both ways.

#[pgrx::pg_schema]
mod tests {
    use pgrx::datum::DatumWithOid;
    use pgrx::prelude::*;
    use serde_json::Value;

    use crate::core::error::SqlError;
    use crate::core::jsonb;

    /// JSON texts covering every kind of value, nesting, numbers beyond 64 bits and strings
    /// that need escaping.
    const TEXTS: &[&str] = &[
        r#"{"a": 1, "b": [true, false, null], "c": {"d": "e", "": ""}, "z": []}"#,
        r#"{}"#,
        r#"[]"#,
        r#"[[], {}, [[1]], {"x": {"y": {"z": null}}}]"#,
        r#""a string at the top""#,
        r#"42"#,
        r#"-9223372036854775808"#,
        r#"18446744073709551615"#,
        r#"123456789012345678901234567890"#,
        r#"1.5"#,
        r#"-0.25e-3"#,
        r#"1e20"#,
        r#"true"#,
        r#"null"#,
        r#"{"quote \" and backslash \\": "tab\tnewline\nunicode \u00e9 \ud83d\ude00 nul-free"}"#,
        r#"{"b": 2, "a": 1, "aa": 3, "ab": [1.0, 2.50, -3]}"#,
    ];

    /// The same value as `jsonb_in` of serde's text of it (what pgrx's `JsonB` stores: a number
    /// serde holds as a float is that float's text either way).
    #[pg_test]
    fn built_jsonb_equals_jsonb_in_of_the_text() {
        for text in TEXTS {
            let value: Value = serde_json::from_str(text).unwrap();
            let printed = value.to_string();
            let text = &printed.as_str();
            let d = jsonb::to_datum(&value).unwrap();
            // SAFETY: a jsonb datum of this memory context, used by the statement below.
            let built = unsafe { DatumWithOid::new(d, pg_sys::JSONBOID) };
            let same = Spi::get_one_with_args::<bool>(
                "SELECT $1 = $2::jsonb AND $1::text = ($2::jsonb)::text",
                &[built, (*text).into()],
            )
            .unwrap();
            assert_eq!(same, Some(true), "built differently: {text}");
        }
    }

    #[pg_test]
    fn read_value_equals_serde_of_the_text() {
        for text in TEXTS {
            let expected: Value = serde_json::from_str(text).unwrap();
            let read = Spi::connect(|client| {
                let t = client.select("SELECT $1::jsonb", None, &[(*text).into()])?;
                Ok::<_, pgrx::spi::SpiError>(crate::core::prepared::json_at(&t.first(), 1))
            })
            .unwrap()
            .unwrap();
            assert_eq!(read, Some(expected), "read differently: {text}");
        }
    }

    /// Nesting as deep as serde_json reads is converted both ways; deeper is 22023, never a
    /// stack overflow (a `serde_json::Value` recurses when dropped).
    #[pg_test]
    fn nesting_is_bounded_both_ways() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let read = |text: &str| {
            Spi::connect(|client| {
                let t = client.select("SELECT $1::jsonb", None, &[text.into()])?;
                Ok::<_, pgrx::spi::SpiError>(crate::core::prepared::json_at(&t.first(), 1))
            })
            .unwrap()
        };
        let deepest = nested(jsonb::MAX_DEPTH);
        let value = read(&deepest).unwrap().unwrap();
        assert_eq!(value, serde_json::from_str::<Value>(&deepest).unwrap());
        assert!(jsonb::to_datum(&value).is_ok());
        for depth in [jsonb::MAX_DEPTH + 1, 5000] {
            let e = read(&nested(depth)).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "read at depth {depth}");
        }
        let mut deeper = value;
        deeper = Value::Array(vec![deeper]);
        assert_eq!(jsonb::to_datum(&deeper).unwrap_err().sqlstate(), "22023");
        let object = serde_json::json!({ "a": deeper });
        assert_eq!(
            jsonb::object_to_datum(object.as_object().unwrap())
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
    }

    /// A NUL character is refused, as jsonb_in refuses \u0000: a jsonb holding one would print
    /// as text no restore could load.
    #[pg_test]
    fn a_nul_character_is_refused() {
        for value in [
            serde_json::json!({"a": "x\0y"}),
            serde_json::json!({"x\0": 1}),
            serde_json::json!(["\0"]),
        ] {
            let e = jsonb::to_datum(&value).unwrap_err();
            assert_eq!(e.sqlstate(), "22P02", "{value}");
        }
    }

    #[pg_test]
    fn a_jsonb_null_column_reads_as_none() {
        let read = Spi::connect(|client| {
            let t = client.select("SELECT NULL::jsonb", None, &[])?;
            Ok::<_, pgrx::spi::SpiError>(crate::core::prepared::json_at(&t.first(), 1))
        })
        .unwrap()
        .unwrap();
        assert_eq!(read, None);
    }

    /// An answer read in the function's own connection lives outside SPI's memory; read in a
    /// nested one, it is refused (XX000) instead of pointing at memory the outer connection's
    /// end frees.
    #[pg_test]
    fn an_answer_is_read_in_the_outermost_connection_only() {
        use crate::core::answer::JsonbAnswer;
        let sql = "SELECT jsonb_build_object('status', 'claimed', 'n', 1)";
        let outer = Spi::connect(|client| {
            let t = client.select(sql, None, &[])?;
            Ok::<_, pgrx::spi::SpiError>(JsonbAnswer::from_current(&t.first(), 1))
        })
        .unwrap()
        .unwrap()
        .expect("an answer");
        // Still readable after the connection closed: it lives in the test's own context.
        // SAFETY: a jsonb datum of this call.
        let read = unsafe { jsonb::from_datum(outer.datum()) }.unwrap();
        assert_eq!(read, serde_json::json!({"status": "claimed", "n": 1}));

        let nested = Spi::connect(|_outer| {
            Spi::connect(|client| {
                let t = client.select(sql, None, &[])?;
                Ok::<_, pgrx::spi::SpiError>(
                    JsonbAnswer::from_current(&t.first(), 1).map(|a| a.is_some()),
                )
            })
        })
        .unwrap();
        assert_eq!(nested.unwrap_err().sqlstate(), "XX000");
    }
}
