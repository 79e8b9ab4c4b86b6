//! The one rule for segment ids, shared by every route that takes one (`PUT /segments/{id}`,
//! `POST /destinations` and `…/mappings`, `POST /qualifications`): a segment id ends up in table
//! keys and in Amazon's `externalAudienceId`, so it uses a conservative alphabet.

/// Longest segment id, in characters (all ASCII, so bytes too).
pub const MAX_SEGMENT_ID_CHARS: usize = 128;

/// The rule, as every error states it.
pub fn segment_id_rule() -> String {
    format!("1–{MAX_SEGMENT_ID_CHARS} characters of A–Z, a–z, 0–9, '-', '_', '.', ':'")
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// `Ok` when `id` follows the rule; otherwise what every route answers after the field's name:
/// `must be 1–128 characters of … (<what is wrong>)`.
pub fn check_segment_id(id: &str) -> Result<(), String> {
    let problem = if id.is_empty() {
        "it is empty".to_string()
    } else if let Some((i, c)) = id.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        // A segment id is a name, not personal data: the offending character may be shown.
        format!("it contains {c:?} at position {i}")
    } else if id.len() > MAX_SEGMENT_ID_CHARS {
        format!("it has {} characters", id.len())
    } else {
        return Ok(());
    };
    Err(format!("must be {} ({problem})", segment_id_rule()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_use_a_safe_alphabet() {
        for ok in ["seg-1_a.b:c", "S", &"x".repeat(128)] {
            assert_eq!(check_segment_id(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "it is empty"),
            ("a#b", "it contains '#' at position 1"),
            ("a b", "it contains ' ' at position 1"),
            ("a/b", "it contains '/' at position 1"),
            ("séga", "it contains 'é' at position 1"),
            ("tab\t", "it contains '\\t' at position 3"),
        ];
        for (id, why) in cases {
            let e = check_segment_id(id).unwrap_err();
            assert!(e.starts_with("must be 1–128 characters of A–Z"), "{e}");
            assert!(e.ends_with(&format!("({why})")), "{id:?}: {e}");
        }
        assert!(
            check_segment_id(&"x".repeat(129))
                .unwrap_err()
                .ends_with("(it has 129 characters)")
        );
    }
}
