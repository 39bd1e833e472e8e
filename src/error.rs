//! Every failure a user can meet, with its SQLSTATE, message and hint.
//!
//! Code below the SQL wrappers returns `LakeError`; only the wrappers turn it into an ERROR, so
//! each failure is described once and the catalogue in the README mirrors this file.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::fmt;

#[derive(Debug, Clone)]
pub enum LakeError {
    /// An argument or option is not acceptable.
    InvalidParameter {
        message: String,
        hint: Option<String>,
    },
    /// A table or schema name that cannot be parsed.
    InvalidName(String),
    /// `target` is not a synced table.
    NotSynced(String),
    /// The target exists and belongs to somebody else's data.
    TargetExists(String),
    /// The source path or URI does not exist.
    SourceNotFound(String),
    /// The source exists but holds no Delta log.
    NotDeltaTable(String),
    /// A data file the log names is missing.
    DataFileMissing { source: String, detail: String },
    /// A data file or log entry could not be read or decoded.
    Corrupt { source: String, detail: String },
    /// A protocol feature, type or URI scheme we do not support.
    Unsupported {
        message: String,
        hint: Option<String>,
    },
    /// A column named by the user is not in the source.
    UndefinedColumn {
        table: String,
        column: String,
        hint: Option<String>,
    },
    /// Two source rows share a primary key.
    DuplicateKey { target: String, key: String },
    /// Readers held the table longer than the user's lock_timeout allows the swap to wait.
    SwapLockTimeout { target: String, waited_ms: u64 },
    /// A NUL byte in a string, which Postgres text cannot hold.
    NullByte { column: String, key: String },
    /// A value that does not fit its Postgres column.
    OutOfRange {
        column: String,
        key: String,
        detail: String,
    },
    /// A string the database's encoding cannot hold (a non-UTF8 database), found by COPY.
    Untranslatable { table: String, detail: String },
    /// The same, found by our encoder: which value holds which character.
    Unrepresentable {
        column: String,
        key: String,
        character: char,
        encoding: String,
    },
    /// The caller may not read server files or change this synced table.
    Permission {
        message: String,
        hint: Option<String>,
    },
    /// The versions an incremental sync needs cannot be replayed; only a full refresh helps.
    Gap { reason: String },
    /// The Delta schema changed in a way that would lose or misplace data if applied by a sync.
    SchemaChanged { target: String, detail: String },
    /// The object store refused the credential (wrong, expired, or without permission).
    StoreDenied {
        source: String,
        credential: Option<String>,
        detail: String,
    },
    /// The object store did not answer (down, unreachable, too slow).
    StoreUnavailable { source: String, detail: String },
    /// A credential of this name exists already (for this role).
    CredentialExists(String),
    /// No credential of this name (that this role owns).
    UndefinedCredential(String),
    /// A credential that synced tables still name.
    CredentialInUse { name: String, tables: String },
    /// Anything the Delta reader reports that has no better class.
    Delta { source: String, detail: String },
    /// A bug or an unexpected state of ours.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, LakeError>;

/// How the messages of the failures that need a full refresh begin (a caught ERROR carries only
/// its SQLSTATE and text).
const GAP_PREFIX: &str = "cannot sync incrementally: ";
const SCHEMA_PREFIX: &str = "the schema of the Delta table behind synced table ";

impl LakeError {
    pub fn invalid(message: impl Into<String>) -> Self {
        LakeError::InvalidParameter {
            message: message.into(),
            hint: None,
        }
    }

    pub fn invalid_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        LakeError::InvalidParameter {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// Whether this failure leaves the synced table needing a full refresh.
    pub fn needs_full_refresh(&self) -> bool {
        matches!(
            self,
            LakeError::Gap { .. } | LakeError::SchemaChanged { .. }
        )
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            LakeError::InvalidParameter { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            LakeError::InvalidName(_) => ERRCODE_INVALID_NAME,
            LakeError::NotSynced(_) => ERRCODE_UNDEFINED_OBJECT,
            LakeError::TargetExists(_) => ERRCODE_DUPLICATE_TABLE,
            LakeError::SourceNotFound(_) => ERRCODE_UNDEFINED_FILE,
            LakeError::NotDeltaTable(_) => ERRCODE_WRONG_OBJECT_TYPE,
            LakeError::DataFileMissing { .. } => ERRCODE_UNDEFINED_FILE,
            LakeError::Corrupt { .. } => ERRCODE_DATA_CORRUPTED,
            LakeError::Unsupported { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            LakeError::UndefinedColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            LakeError::DuplicateKey { .. } => ERRCODE_UNIQUE_VIOLATION,
            LakeError::SwapLockTimeout { .. } => ERRCODE_LOCK_NOT_AVAILABLE,
            LakeError::NullByte { .. } => ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            LakeError::OutOfRange { .. } => ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            LakeError::Permission { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            LakeError::Untranslatable { .. } | LakeError::Unrepresentable { .. } => {
                ERRCODE_UNTRANSLATABLE_CHARACTER
            }
            LakeError::Gap { .. } | LakeError::SchemaChanged { .. } => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            LakeError::StoreDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            LakeError::StoreUnavailable { .. } => ERRCODE_IO_ERROR,
            LakeError::CredentialExists(_) => ERRCODE_DUPLICATE_OBJECT,
            LakeError::UndefinedCredential(_) => ERRCODE_UNDEFINED_OBJECT,
            LakeError::CredentialInUse { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            LakeError::Delta { .. } => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            LakeError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            LakeError::InvalidParameter { hint, .. }
            | LakeError::Unsupported { hint, .. }
            | LakeError::UndefinedColumn { hint, .. }
            | LakeError::Permission { hint, .. } => hint.clone(),
            LakeError::NotSynced(_) => {
                Some("lakesync.synced_tables lists the synced tables you own.".into())
            }
            LakeError::StoreDenied { credential, .. } => Some(match credential {
                Some(c) => format!(
                    "Check the keys of credential \"{c}\" and what they may read; alter_credential() replaces them, and the next sync uses the new ones."
                ),
                None => "Name a credential in the synced table's options: {\"credential\": \"name\"}.".into(),
            }),
            LakeError::StoreUnavailable { .. } => Some(
                "Nothing was changed; the next sync tries again. Credential options \"timeout\", \"connect_timeout\", \"max_retries\" and \"retry_timeout\" set how long a sync waits."
                    .into(),
            ),
            LakeError::CredentialExists(_) | LakeError::UndefinedCredential(_) => {
                Some("lakesync.credentials lists the credentials you own.".into())
            }
            LakeError::CredentialInUse { .. } => Some(
                "Point those synced tables at another credential with alter_synced_table(), or drop them first."
                    .into(),
            ),
            LakeError::TargetExists(_) => {
                Some("Choose another target name, or drop the existing table first.".into())
            }
            LakeError::NotDeltaTable(_) => {
                Some("A Delta table is a directory holding a _delta_log directory.".into())
            }
            LakeError::DuplicateKey { .. } => Some(
                "Choose a primary key that is unique in the source, or set option \
                 \"timeseries_key\" to keep the latest row of each key."
                    .into(),
            ),
            LakeError::SwapLockTimeout { .. } => Some(
                "The swap never makes readers queue behind it for long, so it waits for the \
                 sessions holding the table to finish. Raise lock_timeout, or set it to 0 to \
                 wait as long as they take."
                    .into(),
            ),
            LakeError::Gap { .. } => Some(
                "Run full_refresh() on the synced table to rebuild it from the latest version, \
                 or set option \"on_gap\" to \"full_refresh\" to do that automatically."
                    .into(),
            ),
            LakeError::SchemaChanged { target, .. } => Some(format!(
                "Run full_refresh('{target}') to rebuild the table with the new schema; it \
                 holds an exclusive lock on the table while it runs."
            )),
            LakeError::Untranslatable { .. } | LakeError::Unrepresentable { .. } => Some(
                "Delta strings are Unicode; this database's encoding cannot hold every character. \
                 Sync into a database created with ENCODING 'UTF8', or leave the column out with \
                 option \"columns\"."
                    .into(),
            ),
            LakeError::NullByte { .. } => Some(
                "Postgres text cannot hold NUL bytes; set option \"null_bytes\" to \"strip\" \
                 to remove them."
                    .into(),
            ),
            _ => None,
        }
    }

    /// Raises this error as a Postgres ERROR. Never returns. The error is kept (see
    /// [`raised`]) so that code catching the ERROR can tell which of ours it was by its variant.
    pub fn raise(&self) -> ! {
        RAISED.with(|r| *r.borrow_mut() = Some(self.clone()));
        let mut report = ErrorReport::new(
            self.sqlstate(),
            for_server(&self.to_string()),
            "pg_lakesync",
        );
        if let Some(h) = self.hint() {
            report = report.set_hint(for_server(&redact(&h)));
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR returned")
    }
}

/// Every message of ours goes through [`redact`]: a store's error can quote a signed URL or,
/// worse, a key.
impl fmt::Display for LakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&Plain(self).to_string()))
    }
}

struct Plain<'a>(&'a LakeError);

impl fmt::Display for Plain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            LakeError::StoreDenied { source, credential, detail } => match credential {
                Some(c) => write!(f, "the object store refused credential \"{c}\" for Delta table \"{source}\": {detail}"),
                None => write!(f, "the object store refused to read Delta table \"{source}\": {detail}"),
            },
            LakeError::StoreUnavailable { source, detail } => write!(
                f,
                "the object store of Delta table \"{source}\" did not answer: {detail}"
            ),
            LakeError::CredentialExists(n) => write!(f, "credential \"{n}\" already exists"),
            LakeError::UndefinedCredential(n) => write!(f, "credential \"{n}\" does not exist"),
            LakeError::CredentialInUse { name, tables } => write!(
                f,
                "credential \"{name}\" is named by synced table(s) {tables}"
            ),
            LakeError::InvalidParameter { message, .. } => write!(f, "{message}"),
            LakeError::InvalidName(m) => write!(f, "{m}"),
            LakeError::NotSynced(t) => write!(f, "\"{t}\" is not a synced table"),
            LakeError::TargetExists(t) => {
                write!(f, "table \"{t}\" already exists and is not a synced table")
            }
            LakeError::SourceNotFound(s) => write!(f, "Delta table source \"{s}\" does not exist"),
            LakeError::NotDeltaTable(s) => {
                write!(f, "\"{s}\" is not a Delta table (no _delta_log)")
            }
            LakeError::DataFileMissing { source, detail } => {
                write!(
                    f,
                    "a data file of Delta table \"{source}\" is missing: {detail}"
                )
            }
            LakeError::Corrupt { source, detail } => {
                write!(f, "Delta table \"{source}\" could not be read: {detail}")
            }
            LakeError::Unsupported { message, .. } => write!(f, "{message}"),
            LakeError::UndefinedColumn { table, column, .. } => {
                write!(
                    f,
                    "column \"{column}\" does not exist in Delta table \"{table}\""
                )
            }
            LakeError::DuplicateKey { target, key } => write!(
                f,
                "duplicate primary key {key} in the source of synced table \"{target}\""
            ),
            LakeError::SwapLockTimeout { target, waited_ms } => write!(
                f,
                "could not lock synced table \"{target}\" to swap in its new rows: other sessions \
                 held it for {waited_ms} ms, longer than lock_timeout"
            ),
            LakeError::NullByte { column, key } => write!(
                f,
                "column \"{column}\" of the row with key {key} contains a NUL byte (0x00)"
            ),
            LakeError::OutOfRange {
                column,
                key,
                detail,
            } => {
                write!(f, "value of column \"{column}\" in the row with key {key} is out of range: {detail}")
            }
            LakeError::Permission { message, .. } => write!(f, "{message}"),
            LakeError::Unrepresentable {
                column,
                key,
                character,
                encoding,
            } => write!(
                f,
                "column \"{column}\" of the row with key {key} holds character U+{:04X}, which database encoding \"{encoding}\" cannot store",
                *character as u32
            ),
            LakeError::Untranslatable { table, detail } => write!(
                f,
                "a string synced into \"{table}\" cannot be stored in the database's encoding: {detail}"
            ),
            LakeError::Gap { reason } => write!(f, "{GAP_PREFIX}{reason}"),
            LakeError::SchemaChanged { target, detail } => {
                write!(f, "{SCHEMA_PREFIX}\"{target}\" changed: {detail}")
            }
            LakeError::Delta { source, detail } => {
                write!(f, "reading Delta table \"{source}\" failed: {detail}")
            }
            LakeError::Internal(m) => write!(f, "pg_lakesync internal error: {m}"),
        }
    }
}

thread_local! {
    static RAISED: std::cell::RefCell<Option<LakeError>> = const { std::cell::RefCell::new(None) };
}

/// Forgets the last error raised, at the start of each sync: an ERROR of somebody else's with
/// the same SQLSTATE and text (a trigger's RAISE) must not be taken for that one later.
pub fn forget_raised() {
    RAISED.with(|r| *r.borrow_mut() = None);
}

/// The `LakeError` behind a caught ERROR with this SQLSTATE and message, if it was one of ours
/// (the last one this backend raised, and the same error).
pub fn raised(code: PgSqlErrorCode, message: &str) -> Option<LakeError> {
    RAISED.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|e| e.sqlstate() == code && for_server(&e.to_string()) == message)
            .cloned()
    })
}

/// Text of ours (UTF-8) as the database can take it: as is in a UTF8 (or SQL_ASCII) database;
/// elsewhere non-ASCII characters are written as `\u{e9}`, since Postgres would read our UTF-8
/// bytes as its own encoding and show mojibake. Backend only.
pub fn for_server(s: &str) -> String {
    let enc = unsafe { pgrx::pg_sys::GetDatabaseEncoding() };
    if s.is_ascii()
        || enc == pgrx::pg_sys::pg_enc::PG_UTF8 as i32
        || enc == pgrx::pg_sys::pg_enc::PG_SQL_ASCII as i32
    {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

/// Raises the error of a failed step; used by the SQL wrappers.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

/// The secret values of the credentials this process has used: masked wherever they would
/// appear in a message (process-wide, since errors are made on the I/O threads too).
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Secrets shorter than this are not masked (a `true`, a short id would mask ordinary words).
const MIN_SECRET_LEN: usize = 6;

/// Remembers secret values to mask in every later message of this process.
pub fn register_secrets<'a>(values: impl IntoIterator<Item = &'a str>) {
    let mut known = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    for v in values {
        if v.len() >= MIN_SECRET_LEN && !known.iter().any(|k| k == v) {
            known.push(v.to_string());
        }
    }
}

/// `s` without any registered secret and without the query strings of the URLs in it (where
/// SAS tokens and signatures live).
pub fn redact(s: &str) -> String {
    let mut out = s.to_string();
    {
        let known = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
        for secret in known.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
    }
    mask_url_queries(&without_response_bodies(&out))
}

/// A store's error quotes the body of the response it got (an XML or JSON document); only the
/// status and the store's error code are kept — the rest is noise, or, from an endpoint a
/// user pointed somewhere else, whatever that server said.
fn without_response_bodies(s: &str) -> String {
    const STATUS: &str = "status code: ";
    let Some(at) = s.find(STATUS) else {
        return s.to_string();
    };
    let rest = &s[at + STATUS.len()..];
    // "403 Forbidden: <?xml ...": the status line ends at the first ": " or newline.
    let end = [rest.find(": "), rest.find('\n')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    let code = ["<Code>", "\"reason\": \"", "\"code\": \""]
        .iter()
        .find_map(|open| {
            let i = rest.find(open)? + open.len();
            let j = rest[i..].find(['<', '"'])?;
            let c = &rest[i..i + j];
            (!c.is_empty()
                && c.len() <= 64
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.'))
            .then_some(c)
        });
    let mut out = format!("{}{}", &s[..at + STATUS.len()], &rest[..end]);
    if let Some(c) = code {
        out.push_str(&format!(" ({c})"));
    }
    out
}

fn mask_url_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?***");
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
