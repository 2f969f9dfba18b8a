//! The response-head fields a resumable download reads, parsed from their
//! text: `Content-Length`, `Content-Range`, the `If-Range` validator and
//! `Location` (RFC 9110 §8.6, §14.4, §13.1.5, §10.2.2).

/// The parts of an HTTP response head the download plan decides on. The
/// driver copies them from whatever HTTP library it uses; a header that is
/// absent or not valid UTF-8 is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head<'a> {
    /// The status code.
    pub status: u16,
    /// `Content-Length`.
    pub content_length: Option<&'a str>,
    /// `Content-Range`.
    pub content_range: Option<&'a str>,
    /// `ETag`.
    pub etag: Option<&'a str>,
    /// `Last-Modified`.
    pub last_modified: Option<&'a str>,
    /// `Location`.
    pub location: Option<&'a str>,
}

impl Head<'_> {
    /// `Content-Length` as a number (RFC 9110 §8.6: one or more digits).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length?.trim().parse().ok()
    }

    /// `Content-Range` as (first byte, last byte, complete length).
    pub fn content_range(&self) -> Option<ContentRange> {
        ContentRange::parse(self.content_range?)
    }

    /// The validator for a later `If-Range`: a strong ETag, else
    /// Last-Modified. RFC 9110 §13.1.5: a client must not send a weak
    /// entity tag (`W/"..."`) in `If-Range`.
    pub fn validator(&self) -> Option<&str> {
        self.etag
            .filter(|e| !e.trim_start().starts_with("W/"))
            .or(self.last_modified)
    }
}

/// A `Content-Range` of a `206` (RFC 9110 §14.4): `bytes FIRST-LAST/COMPLETE`
/// or `bytes FIRST-LAST/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// Offset of the first byte in the body.
    pub first: u64,
    /// Offset of the last byte in the body (inclusive).
    pub last: u64,
    /// The whole representation's length, when the server states it.
    pub complete: Option<u64>,
}

impl ContentRange {
    /// Parses `bytes FIRST-LAST/COMPLETE` or `bytes FIRST-LAST/*`; `None` for
    /// anything else, including the unsatisfied form `bytes */COMPLETE` and a
    /// range whose last byte comes before its first.
    pub fn parse(v: &str) -> Option<ContentRange> {
        let rest = v.trim().strip_prefix("bytes ")?;
        let (range, complete) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        let (first, last) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
        if last < first {
            return None;
        }
        let complete = match complete.trim() {
            "*" => None,
            t => Some(t.parse::<u64>().ok()?),
        };
        Some(ContentRange {
            first,
            last,
            complete,
        })
    }

    /// Bytes in the body.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true: a parsed range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let r = |s| ContentRange::parse(s).map(|r| (r.first, r.last, r.complete));
        assert_eq!(r("bytes 10-19/100"), Some((10, 19, Some(100))));
        assert_eq!(r(" bytes 0-0/* "), Some((0, 0, None)));
        assert_eq!(r("bytes 5-4/100"), None);
        assert_eq!(r("bytes */100"), None);
        assert_eq!(r("items 0-1/2"), None);
        assert_eq!(r("bytes 0-1/x"), None);
        assert_eq!(ContentRange::parse("bytes 10-19/100").unwrap().len(), 10);
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = Head {
            etag: Some("W/\"x\""),
            ..Head::default()
        };
        assert_eq!(h.validator(), None);
        h.last_modified = Some("Tue, 15 Nov 1994 12:45:26 GMT");
        assert_eq!(h.validator(), Some("Tue, 15 Nov 1994 12:45:26 GMT"));
        h.etag = Some("\"abc\"");
        assert_eq!(h.validator(), Some("\"abc\""));
    }

    #[test]
    fn content_length_is_digits() {
        let h = |v| Head {
            content_length: Some(v),
            ..Head::default()
        };
        assert_eq!(h(" 42 ").content_length(), Some(42));
        assert_eq!(h("-1").content_length(), None);
        assert_eq!(h("4 2").content_length(), None);
    }
}
