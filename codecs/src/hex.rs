//! Hex as fixture files write it: pairs of hex digits, free whitespace, and
//! `#` comments to the end of a line.

/// A hex text that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is neither a hex digit, whitespace nor a comment.
    #[error("line {line}: '{ch}' is not a hex digit")]
    BadChar {
        /// 1-based line of the character.
        line: usize,
        /// The character.
        ch: char,
    },
    /// An odd number of hex digits: the last byte is half a byte.
    #[error("odd number of hex digits")]
    OddLength,
}

/// Parses hex with whitespace and `#` comments into bytes.
pub fn parse(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    for (n, line) in text.lines().enumerate() {
        let body = line.split('#').next().unwrap_or("");
        for ch in body.chars() {
            if ch.is_whitespace() {
                continue;
            }
            let v = ch
                .to_digit(16)
                .ok_or(HexError::BadChar { line: n + 1, ch })? as u8;
            match high.take() {
                None => high = Some(v),
                Some(h) => out.push(h << 4 | v),
            }
        }
    }
    if high.is_some() {
        return Err(HexError::OddLength);
    }
    Ok(out)
}

/// Lower-case hex with a space between bytes, for diffs in test failures.
pub fn spaced(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_whitespace() {
        let text = "44 5f 12 34 # header\n01020304 # token\n  d1 0e 3a\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![0x44, 0x5f, 0x12, 0x34, 1, 2, 3, 4, 0xd1, 0x0e, 0x3a]
        );
        assert_eq!(spaced(&[0x0a, 0xff]), "0a ff");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse("0g"), Err(HexError::BadChar { line: 1, ch: 'g' }));
        assert_eq!(parse("\nabc"), Err(HexError::OddLength));
    }
}
