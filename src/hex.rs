//! Lowercase hexadecimal, for nonces and precomputed keys.

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits (either case) back to bytes; `None` for an odd length or any other character.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_digits() {
        assert_eq!(
            decode(encode(&[0, 0xab, 0xff]).as_bytes()),
            Some(vec![0, 0xab, 0xff])
        );
        assert_eq!(decode(b"ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(decode(b"abc"), None);
        assert_eq!(decode(b"+f"), None, "from_str_radix would take a sign");
        assert_eq!(decode(b"zz"), None);
    }
}
