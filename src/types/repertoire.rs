//! Which characters the database can store. Delta strings are Unicode; a database whose encoding
//! is not UTF8 can hold only some characters, and a sync must say which value (column and key)
//! holds one it cannot — never store mojibake.
//!
//! For single-byte database encodings (LATIN1, WIN1252, KOI8R, …) the encoder checks every
//! non-ASCII character against the 128 the encoding has, on the scan thread, so the error names
//! the column and the key. For multi-byte ones (EUC_JP, …) Postgres' own conversion during the
//! COPY reports the character (naming the table).

use pgrx::pg_sys;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

/// The non-ASCII characters of a single-byte database encoding.
#[derive(Debug)]
pub struct Repertoire {
    pub encoding: String,
    chars: HashSet<char>,
}

impl Repertoire {
    pub fn holds(&self, c: char) -> bool {
        c.is_ascii() || self.chars.contains(&c)
    }

    /// The first character of `s` the encoding cannot hold.
    pub fn first_missing(&self, s: &str) -> Option<char> {
        if s.is_ascii() {
            return None;
        }
        s.chars().find(|&c| !self.holds(c))
    }
}

static DATABASE: OnceLock<Option<Arc<Repertoire>>> = OnceLock::new();

/// The repertoire to check against in this backend's database, None when every character fits
/// (UTF8, SQL_ASCII) or Postgres checks during the COPY (multi-byte encodings). Computed once
/// per backend (a backend serves one database), in the backend: it looks up conversions.
pub fn for_database() -> Option<Arc<Repertoire>> {
    DATABASE.get_or_init(compute).clone()
}

fn compute() -> Option<Arc<Repertoire>> {
    let enc = unsafe { pg_sys::GetDatabaseEncoding() };
    let utf8 = pg_sys::pg_enc::PG_UTF8 as i32;
    if enc == utf8
        || enc == pg_sys::pg_enc::PG_SQL_ASCII as i32
        || unsafe { pg_sys::pg_encoding_max_length(enc) } != 1
    {
        return None;
    }
    let mut chars = HashSet::new();
    for b in 0x80u8..=0xff {
        // A byte the encoding leaves undefined has no conversion: an ERROR, rolled back.
        let converted = crate::subxact::run(false, || unsafe {
            let mut src = [b, 0];
            let out = pg_sys::pg_do_encoding_conversion(src.as_mut_ptr(), 1, enc, utf8);
            let s = std::ffi::CStr::from_ptr(out as *const std::ffi::c_char);
            Ok(s.to_str().ok().and_then(|s| s.chars().next()))
        });
        if let Ok(Ok(Some(c))) = converted {
            chars.insert(c);
        }
    }
    let encoding = unsafe {
        std::ffi::CStr::from_ptr(pg_sys::pg_encoding_to_char(enc))
            .to_string_lossy()
            .into_owned()
    };
    Some(Arc::new(Repertoire { encoding, chars }))
}

/// Whether the database stores Unicode as is (UTF8), or takes our bytes unchecked (SQL_ASCII).
/// Elsewhere a name of ours in SQL would be read as the database's own encoding.
pub fn database_is_unicode() -> bool {
    let enc = unsafe { pg_sys::GetDatabaseEncoding() };
    enc == pg_sys::pg_enc::PG_UTF8 as i32 || enc == pg_sys::pg_enc::PG_SQL_ASCII as i32
}
