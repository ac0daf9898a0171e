//! Relay pagination: page sizes within the configured maximum, and opaque keyset cursors.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, OutputType};

use super::error::{ApiError, ApiResult};

pub const DEFAULT_PAGE: i64 = 50;

/// `first`, checked against the server's maximum page size.
pub fn page_size(ctx: &Context<'_>, first: Option<i32>) -> ApiResult<i64> {
    let max = super::state(ctx).config.max_page_size;
    check_size(first.map(i64::from), max)
}

pub fn check_size(first: Option<i64>, max: i64) -> ApiResult<i64> {
    match first {
        None => Ok(DEFAULT_PAGE.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(format!("page size {n} is outside 1..={max}"))),
    }
}

/// A cursor is the row's sort key, `|`-joined and hex-encoded: opaque to clients, and
/// the next page is a keyset query (`> key`), never an offset.
pub fn encode(parts: &[String]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| 2 * p.len() + 2).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            push_hex(&mut out, b"|");
        }
        push_hex(&mut out, part.as_bytes());
    }
    out
}

/// Lower-case hex of `bytes` appended to `out` as bytes (for JSON written directly).
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]);
    }
}

/// Lower-case hex of `bytes` appended to `out`: `hex::encode`'s digits, a byte at a time
/// through a table rather than a `char` iterator (a page writes a hundred cursors).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

pub fn decode(cursor: &str, parts: usize) -> ApiResult<Vec<String>> {
    let bad = || ApiError::invalid("malformed cursor");
    if cursor.len() > 512 {
        return Err(bad());
    }
    let bytes = hex::decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let fields: Vec<String> = text.split('|').map(str::to_string).collect();
    if fields.len() != parts {
        return Err(bad());
    }
    Ok(fields)
}

pub fn parse<T: std::str::FromStr>(text: &str) -> ApiResult<T> {
    text.parse().map_err(|_| ApiError::invalid("malformed cursor"))
}

/// A connection from `size + 1` fetched rows: the extra row only says there is a next page.
pub fn connection<T: OutputType>(
    mut rows: Vec<T>,
    size: i64,
    has_previous: bool,
    key: impl Fn(&T) -> Vec<String>,
) -> Connection<String, T> {
    let has_next = rows.len() as i64 > size;
    rows.truncate(size as usize);
    let mut connection = Connection::new(has_previous, has_next);
    connection
        .edges
        .extend(rows.into_iter().map(|row| Edge::new(encode(&key(&row)), row)));
    connection
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = encode(&["2025-01-01T00:00:00Z".into(), "x".into()]);
        assert_eq!(decode(&c, 2).unwrap()[1], "x");
        assert!(decode(&c, 3).is_err());
        assert!(decode("zz", 1).is_err());
        assert!(decode(&"a".repeat(1000), 1).is_err());
    }

    #[test]
    fn cursors_are_the_hex_of_the_joined_key() {
        let parts = vec![
            "2025-03-10T00:00:00.000000Z".to_string(),
            "é|x".to_string(),
            String::new(),
        ];
        assert_eq!(encode(&parts), hex::encode(parts.join("|")));
        let mut bytes = Vec::new();
        hex_into(&mut bytes, parts.join("|").as_bytes());
        assert_eq!(bytes, hex::encode(parts.join("|")).into_bytes());
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn page_sizes() {
        assert_eq!(check_size(None, 500).unwrap(), 50);
        assert_eq!(check_size(Some(500), 500).unwrap(), 500);
        assert!(check_size(Some(501), 500).is_err());
        assert!(check_size(Some(0), 500).is_err());
        assert!(check_size(Some(-1), 500).is_err());
    }
}
