//! Names and external ids of the Data Provider audiences adsync creates (pure).
//!
//! Amazon wants an audience `name` of 10–128 alphanumeric characters that can never be updated,
//! and an `externalAudienceId` chosen by us. Both are derived once, when a mapping is created, and
//! stored with the mapping; they are never recomputed, so renaming a segment later changes nothing
//! at Amazon.

/// Shortest audience name Amazon accepts.
pub const MIN_NAME_CHARS: usize = 10;
/// Longest audience name Amazon accepts.
pub const MAX_NAME_CHARS: usize = 128;

/// The audience name for a segment: its name reduced to ASCII letters, digits and single spaces
/// (Amazon documents names as alphanumeric; spaces are accepted in its own examples), trimmed to
/// 128 characters, and padded to at least 10 with ` segment <id>` (then ` audience`) when short.
pub fn audience_name(segment_name: &str, segment_id: &str) -> String {
    let mut name = sanitize(segment_name);
    if name.len() < MIN_NAME_CHARS {
        let id = sanitize(segment_id);
        name = join(&name, &join("segment", &id));
    }
    if name.len() < MIN_NAME_CHARS {
        name = join(&name, "audience");
    }
    // Only ASCII is left, so byte length = character count and any index is a char boundary.
    if name.len() > MAX_NAME_CHARS {
        name.truncate(MAX_NAME_CHARS);
        let trimmed = name.trim_end().len();
        name.truncate(trimmed);
    }
    name
}

/// Our stable key of the audience at Amazon: one audience per (destination, segment), so the same
/// segment mapped to two destinations of one advertiser gets two distinct audiences.
pub fn external_audience_id(destination_id: &str, segment_id: &str) -> String {
    format!("adsync-{destination_id}-{segment_id}")
}

/// ASCII letters and digits kept, everything else a space, runs of spaces collapsed, trimmed.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        } else {
            pending_space = true;
        }
    }
    out
}

/// `a b`, or whichever is non-empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a} {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        (MIN_NAME_CHARS..=MAX_NAME_CHARS).contains(&name.chars().count())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
            && !name.starts_with(' ')
            && !name.ends_with(' ')
            && !name.contains("  ")
    }

    #[test]
    fn ordinary_names_are_kept() {
        assert_eq!(audience_name("Luxury Travelers", "s1"), "Luxury Travelers");
    }

    #[test]
    fn punctuation_and_non_ascii_become_single_spaces() {
        assert_eq!(
            audience_name("  Café — lovers (EU), 2026!  ", "s1"),
            "Caf lovers EU 2026"
        );
    }

    #[test]
    fn short_names_are_padded_with_the_segment_id() {
        assert_eq!(audience_name("Cars", "seg-42"), "Cars segment seg 42");
        assert_eq!(audience_name("", "7"), "segment 7 audience");
        assert_eq!(audience_name("!!!", "x"), "segment x audience");
        assert!(valid(&audience_name("", "")));
    }

    #[test]
    fn long_names_are_trimmed_to_128_without_trailing_space() {
        let long = "word ".repeat(60);
        let n = audience_name(&long, "s");
        assert!(valid(&n), "{n:?}");
        assert!(n.len() <= 128 && n.len() >= 124);
        let exact = "a".repeat(200);
        assert_eq!(audience_name(&exact, "s").len(), 128);
    }

    #[test]
    fn every_derived_name_is_valid() {
        let samples = [
            "",
            " ",
            "a",
            "ab cd",
            "0123456789",
            "日本語のセグメント",
            "x\u{0}y\tz\n",
            "Exactly ten",
            "ninechars",
            "a-b-c-d-e-f-g-h",
            &"z".repeat(129),
            &"é".repeat(300),
        ];
        for s in samples {
            for id in ["", "1", "segment-with-a-long-id-0123456789", "日本"] {
                let n = audience_name(s, id);
                assert!(valid(&n), "{s:?}/{id:?} -> {n:?}");
                // Deterministic: the same inputs always give the same name.
                assert_eq!(n, audience_name(s, id));
            }
        }
    }

    #[test]
    fn external_ids_are_stable_and_distinct_per_destination() {
        assert_eq!(external_audience_id("d1", "s1"), "adsync-d1-s1");
        assert_ne!(
            external_audience_id("d1", "s1"),
            external_audience_id("d2", "s1")
        );
    }
}
