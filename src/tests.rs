//! In-backend unit tests (`cargo pgrx test`): encoders checked against Postgres' own receive
//! functions, and the parsers users meet first.

#[pgrx::pg_schema]
mod tests {
    use crate::options::{Mode, NullBytes, SyncOptions};
    use crate::plan::target::{parse, TargetName};
    use crate::types::numeric::{decimal_text, write_numeric};
    use crate::types::temporal::{date_text, timestamp_text};
    use pgrx::prelude::*;
    use serde_json::json;

    /// Decodes our binary numeric with Postgres' numeric_recv and prints it with numeric_out.
    fn pg_numeric(bytes: &[u8], typmod: i32) -> String {
        unsafe {
            let si = pg_sys::makeStringInfo();
            pg_sys::appendBinaryStringInfo(si, bytes.as_ptr() as _, bytes.len() as i32);
            let value: pgrx::AnyNumeric = pgrx::direct_function_call(
                pg_sys::numeric_recv,
                &[
                    Some(pg_sys::Datum::from(si)),
                    Some(pg_sys::Datum::from(pg_sys::NUMERICOID)),
                    Some(pg_sys::Datum::from(typmod)),
                ],
            )
            .expect("numeric");
            value.to_string()
        }
    }

    #[pg_test]
    fn numeric_binary_matches_postgres() {
        let cases: &[(i128, u8, &str)] = &[
            (0, 0, "0"),
            (0, 3, "0.000"),
            (1, 0, "1"),
            (-1, 0, "-1"),
            (12345, 2, "123.45"),
            (-12345, 2, "-123.45"),
            (1, 12, "0.000000000001"),
            (100000000, 4, "10000.0000"),
            (99999, 2, "999.99"),
            (10000, 0, "10000"),
            (123456789012345678, 9, "123456789.012345678"),
            (
                12345678901234567890123456789012345678,
                12,
                "12345678901234567890123456.789012345678",
            ),
            (
                -99999999999999999999999999999999999999,
                0,
                "-99999999999999999999999999999999999999",
            ),
            (
                99999999999999999999999999999999999999,
                38,
                "0.99999999999999999999999999999999999999",
            ),
        ];
        for (v, scale, want) in cases {
            let mut buf = Vec::new();
            write_numeric(*v, *scale, &mut buf);
            assert_eq!(pg_numeric(&buf, -1), *want, "value {v} scale {scale}");
            assert_eq!(decimal_text(*v, *scale), *want);
        }
    }

    #[pg_test]
    fn temporal_text() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(-1), "1969-12-31");
        assert_eq!(date_text(2932896), "9999-12-31");
        assert_eq!(timestamp_text(0, true), "1970-01-01T00:00:00+00:00");
        assert_eq!(timestamp_text(1_500_000, false), "1970-01-01T00:00:01.5");
        assert_eq!(timestamp_text(-1, true), "1969-12-31T23:59:59.999999+00:00");
    }

    #[pg_test]
    fn options_parse_and_reject() {
        let o = SyncOptions::parse(&json!({"version": 3, "columns": ["a", "b"], "timeseries_key": "t", "null_bytes": "strip"})).unwrap();
        assert_eq!(o.version, Some(3));
        assert_eq!(o.columns, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(o.timeseries_key.as_deref(), Some("t"));
        assert_eq!(o.null_bytes, NullBytes::Strip);
        assert_eq!(
            SyncOptions::parse(&json!({})).unwrap(),
            SyncOptions::default()
        );
        for bad in [
            json!({"nope": 1}),
            json!({"version": -1}),
            json!({"version": "1"}),
            json!({"columns": []}),
            json!({"columns": ["a", "a"]}),
            json!({"null_bytes": "ignore"}),
            json!([1]),
        ] {
            assert!(SyncOptions::parse(&bad).is_err(), "{bad} accepted");
        }
        assert_eq!(Mode::parse("SNAPSHOT").unwrap(), Mode::Snapshot);
        assert!(Mode::parse("eventual").is_err());
    }

    #[pg_test]
    fn target_names() {
        let parts = |s: &str| parse(s).unwrap();
        let own = |s: &str| s.to_string();
        assert_eq!(parts("trips"), (None, own("trips")));
        assert_eq!(parts("Sales.Trips"), (Some(own("sales")), own("trips")));
        // Postgres folds ASCII letters only.
        assert_eq!(parts("\u{c4}RGER"), (None, own("\u{c4}rger")));
        let (schema, table) = parts(r#""My Schema"."Trips ""2024""""#);
        assert_eq!(
            (schema.as_deref(), table.as_str()),
            (Some("My Schema"), r#"Trips "2024""#)
        );
        let t = TargetName {
            schema: own("My Schema"),
            table: table.clone(),
        };
        assert_eq!(t.qualified(), r#""My Schema"."Trips ""2024""""#);
        let t = TargetName {
            schema: own("public"),
            table: parts("select").1,
        };
        assert_eq!(t.qualified(), r#"public."select""#);
        for bad in [
            "",
            "a.b.c",
            "\"open",
            "a b",
            "x.",
            ".x",
            "1a",
            "\"\"",
            &"a".repeat(64),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
    #[pg_test]
    fn secrets_urls_and_response_bodies_are_masked() {
        use crate::error::{redact, register_secrets};
        register_secrets(["s3cr3t-value-xyz", "short"]);
        assert_eq!(redact("key s3cr3t-value-xyz in text"), "key *** in text");
        // Too short to mask without masking ordinary words.
        assert_eq!(redact("a short word"), "a short word");
        assert_eq!(
            redact("GET https://acct.blob.core.windows.net/c/p?sv=2022&sig=abc failed"),
            "GET https://acct.blob.core.windows.net/c/p?*** failed"
        );
        assert_eq!(
            redact("Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AuthorizationFailure</Code><Message>secret stuff</Message></Error>"),
            "Server returned non-2xx status code: 403 Forbidden (AuthorizationFailure)"
        );
    }

    #[pg_test]
    fn credential_options_are_sorted_into_plain_secret_and_ambient() {
        use crate::source::store::{classify, Class, Provider};
        let c = |p, k| classify(p, k).ok();
        assert_eq!(
            c(Provider::S3, "secret_access_key"),
            Some(("aws_secret_access_key".into(), Class::Secret))
        );
        assert_eq!(
            c(Provider::S3, "access_key_id"),
            Some(("aws_access_key_id".into(), Class::Plain))
        );
        assert_eq!(
            c(Provider::S3, "metadata_endpoint"),
            Some(("aws_metadata_endpoint".into(), Class::Ambient))
        );
        assert_eq!(
            c(Provider::S3, "proxy_url"),
            Some(("proxy_url".into(), Class::Secret))
        );
        assert_eq!(
            c(Provider::S3, "timeout"),
            Some(("timeout".into(), Class::Plain))
        );
        assert_eq!(c(Provider::S3, "bucket"), None);
        assert_eq!(
            c(Provider::Azure, "sas_token"),
            Some(("azure_storage_sas_key".into(), Class::Secret))
        );
        assert_eq!(
            c(Provider::Azure, "use_azure_cli"),
            Some(("azure_use_azure_cli".into(), Class::Ambient))
        );
        assert_eq!(c(Provider::Azure, "container_name"), None);
        assert_eq!(
            c(Provider::Gcs, "service_account_key"),
            Some(("google_service_account_key".into(), Class::Secret))
        );
        assert_eq!(
            c(Provider::Gcs, "service_account"),
            Some(("google_service_account".into(), Class::Ambient))
        );
        assert_eq!(c(Provider::Gcs, "nonsense"), None);
    }

    #[pg_test]
    fn object_store_sources_parse_as_directories() {
        use crate::source::location::SourceLocation;
        use crate::source::store::Provider;
        let p = |s| SourceLocation::parse(s).map(|l| (l.url.to_string(), l.provider()));
        assert_eq!(
            p("s3://b/a/t").ok(),
            Some(("s3://b/a/t/".into(), Some(Provider::S3)))
        );
        assert_eq!(
            p("gs://b").ok(),
            Some(("gs://b/".into(), Some(Provider::Gcs)))
        );
        assert_eq!(
            p("abfss://c@acct.dfs.core.windows.net/t").ok(),
            Some((
                "abfss://c@acct.dfs.core.windows.net/t/".into(),
                Some(Provider::Azure)
            ))
        );
        assert!(p("s3://b/t?X-Amz-Signature=1").is_err());
        assert!(p("s3:///t").is_err());
        assert!(p("http://example.com/t").is_err());
    }

    #[pg_test]
    fn durations_of_store_options() {
        use crate::source::store::parse_duration;
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[pg_test]
    fn index_definitions_are_moved_to_the_shadow() {
        let sql = crate::apply::swap::shadow_index_sql(
            "CREATE UNIQUE INDEX \"T_pkey\" ON \"My\".\"T\" USING btree (id) WHERE (x > 0)",
            "\"T_pkey\"",
            "\"My\".\"T\"",
            "pg_temp_77",
            "\"My\".pg_temp_12",
        );
        assert_eq!(
            sql.as_deref(),
            Some("CREATE UNIQUE INDEX pg_temp_77 ON \"My\".pg_temp_12 USING btree (id) WHERE (x > 0)")
        );
        assert_eq!(
            crate::apply::swap::shadow_index_sql(
                "CREATE INDEX i ON s.u USING btree (a)",
                "i",
                "s.t",
                "c",
                "s.x"
            ),
            None
        );
    }
}
