//! Match keys: types, normalisation and SHA-256 hashing, exactly as `docs/amazon-contract.md`
//! ("Events API") says.
//!
//! | type | rule before SHA-256 |
//! |---|---|
//! | EMAIL | trim, lowercase, keep only `a-z 0-9 . @ -` (so `+` is dropped) |
//! | PHONE | keep ASCII digits only (country code included, no `+`) |
//! | FIRST_NAME, LAST_NAME, ADDRESS, CITY, STATE | lowercase, keep only `a-z 0-9` (no accent folding) |
//! | POSTAL | lowercase, remove all white space |
//! | MAID, RAMP_ID, MATCH_ID, REAL_ID, MERKLE_ID, KANTAR_ID, FIP | sent as given, never hashed |
//!
//! A hashed-type value that already is 64 hex characters (after trimming white space) is taken as
//! hashed: it is lowercased and sent without hashing again. A value that normalises to nothing
//! (empty, only punctuation, …) is dropped; the caller rejects an event left with no key.
//!
//! **Accents.** The contract follows Amazon's rule to the letter: the name and address types are
//! lowercased and everything outside `a-z 0-9` is removed, with no accent folding or
//! transliteration, so "José" → `jos`, "São Paulo" → `sopaulo`, "Müller" → `mller`, "Straße" →
//! `strae`, and other scripts (Cyrillic, CJK, …) vanish. Lowercasing is Unicode's (as the
//! JavaScript `toLowerCase` of Amazon's partner samples), so the rare capitals that lowercase to
//! ASCII keep their letter ("İ" → `i`, the Kelvin sign → `k`). Amazon hashes its side the same
//! way, so this is what matches, even where a folded spelling would read better. E-mail
//! addresses are not folded either; POSTAL keeps non-ASCII characters (lowercased), since the
//! contract only removes white space there.

use sha2::{Digest, Sha256};

/// The Events API match-key types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Email,
    Phone,
    FirstName,
    LastName,
    Address,
    City,
    State,
    Postal,
    Maid,
    RampId,
    MatchId,
    RealId,
    MerkleId,
    KantarId,
    Fip,
}

impl KeyType {
    pub const ALL: [KeyType; 15] = [
        KeyType::Email,
        KeyType::Phone,
        KeyType::FirstName,
        KeyType::LastName,
        KeyType::Address,
        KeyType::City,
        KeyType::State,
        KeyType::Postal,
        KeyType::Maid,
        KeyType::RampId,
        KeyType::MatchId,
        KeyType::RealId,
        KeyType::MerkleId,
        KeyType::KantarId,
        KeyType::Fip,
    ];

    /// The wire name (`EMAIL`, `FIRST_NAME`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Email => "EMAIL",
            KeyType::Phone => "PHONE",
            KeyType::FirstName => "FIRST_NAME",
            KeyType::LastName => "LAST_NAME",
            KeyType::Address => "ADDRESS",
            KeyType::City => "CITY",
            KeyType::State => "STATE",
            KeyType::Postal => "POSTAL",
            KeyType::Maid => "MAID",
            KeyType::RampId => "RAMP_ID",
            KeyType::MatchId => "MATCH_ID",
            KeyType::RealId => "REAL_ID",
            KeyType::MerkleId => "MERKLE_ID",
            KeyType::KantarId => "KANTAR_ID",
            KeyType::Fip => "FIP",
        }
    }

    /// Hashed types are normalised and SHA-256 hashed; the others are sent as given.
    pub fn is_hashed(self) -> bool {
        matches!(
            self,
            KeyType::Email
                | KeyType::Phone
                | KeyType::FirstName
                | KeyType::LastName
                | KeyType::Address
                | KeyType::City
                | KeyType::State
                | KeyType::Postal
        )
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Parses a type name, ignoring case, `_` and `-`: the wire names (`EMAIL`, `FIRST_NAME`) and
    /// the flat-object keys (`email`, `firstName`, `first_name`, `postalCode`, `zip`, `rampId`, …).
    pub fn parse(s: &str) -> Option<KeyType> {
        // Folded into a small stack buffer: no allocation per key.
        let mut buf = [0u8; 16];
        let mut n = 0;
        for b in s.bytes() {
            if b == b'_' || b == b'-' {
                continue;
            }
            if n == buf.len() {
                return None;
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        Some(match &buf[..n] {
            b"email" | b"emailaddress" => KeyType::Email,
            b"phone" | b"phonenumber" => KeyType::Phone,
            b"firstname" | b"fn" => KeyType::FirstName,
            b"lastname" | b"ln" => KeyType::LastName,
            b"address" | b"streetaddress" => KeyType::Address,
            b"city" => KeyType::City,
            b"state" => KeyType::State,
            b"postal" | b"postalcode" | b"zip" | b"zipcode" => KeyType::Postal,
            b"maid" => KeyType::Maid,
            b"rampid" => KeyType::RampId,
            b"matchid" => KeyType::MatchId,
            b"realid" => KeyType::RealId,
            b"merkleid" => KeyType::MerkleId,
            b"kantarid" => KeyType::KantarId,
            b"fip" => KeyType::Fip,
            _ => return None,
        })
    }
}

/// A 64-character lowercase hex SHA-256 digest.
pub type HexDigest = [u8; 64];

/// What a match-key value becomes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// A hashed type: lowercase hex SHA-256 of the normalised value (or the given hash, lowercased).
    Hashed(HexDigest),
    /// A raw type, exactly as given.
    Raw(&'a str),
}

impl KeyValue<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII hex digits are ever written into a digest.
            KeyValue::Hashed(h) => std::str::from_utf8(h).unwrap_or(""),
            KeyValue::Raw(s) => s,
        }
    }
}

/// Normalises and hashes match-key values, reusing one scratch buffer (no allocation per key
/// once the buffer has grown to the longest value seen).
#[derive(Debug, Default)]
pub struct KeyHasher {
    scratch: Vec<u8>,
}

impl KeyHasher {
    pub fn new() -> Self {
        Self {
            scratch: Vec::with_capacity(256),
        }
    }

    /// The wire value of one key, or `None` when it normalises to nothing (the key is dropped).
    pub fn key_value<'a>(&mut self, kind: KeyType, value: &'a str) -> Option<KeyValue<'a>> {
        if !kind.is_hashed() {
            // Raw types go out as given; only a blank value counts as nothing.
            return if value.trim().is_empty() {
                None
            } else {
                Some(KeyValue::Raw(value))
            };
        }
        if let Some(h) = prehashed(value) {
            return Some(KeyValue::Hashed(h));
        }
        self.scratch.clear();
        normalise_into(kind, value, &mut self.scratch);
        if self.scratch.is_empty() {
            return None;
        }
        Some(KeyValue::Hashed(sha256_hex(&self.scratch)))
    }

    /// The normalised bytes of a hashed-type value (for tests and docs); empty = dropped.
    pub fn normalised(&mut self, kind: KeyType, value: &str) -> &[u8] {
        self.scratch.clear();
        normalise_into(kind, value, &mut self.scratch);
        &self.scratch
    }
}

/// A value that already is 64 hex characters, lowercased.
pub fn prehashed(value: &str) -> Option<HexDigest> {
    let v = value.trim_ascii().as_bytes();
    if v.len() != 64 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 64];
    for (o, b) in out.iter_mut().zip(v) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// SHA-256 of `bytes` as lowercase hex, on the stack.
pub fn sha256_hex(bytes: &[u8]) -> HexDigest {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 hex characters.
    let _ = hex::encode_to_slice(digest, &mut out);
    out
}

/// Appends the normalised form of `value` (a hashed type) to `out`.
pub fn normalise_into(kind: KeyType, value: &str, out: &mut Vec<u8>) {
    match kind {
        // Non-ASCII bytes are never kept in an e-mail or a phone number.
        KeyType::Email => push_kept(value.as_bytes(), &EMAIL, out),
        KeyType::Phone => push_kept(value.as_bytes(), &DIGITS, out),
        KeyType::Postal => {
            if value.is_ascii() {
                for b in value.bytes() {
                    if !b.is_ascii_whitespace() {
                        out.push(b.to_ascii_lowercase());
                    }
                }
            } else {
                let mut tmp = [0u8; 4];
                for c in value.chars().filter(|c| !c.is_whitespace()) {
                    for l in c.to_lowercase() {
                        out.extend_from_slice(l.encode_utf8(&mut tmp).as_bytes());
                    }
                }
            }
        }
        KeyType::FirstName
        | KeyType::LastName
        | KeyType::Address
        | KeyType::City
        | KeyType::State => {
            if value.is_ascii() {
                push_kept(value.as_bytes(), &ALNUM, out);
            } else {
                // Unicode lowercase first, then keep ASCII letters and digits only.
                for c in value.chars() {
                    if c.is_ascii() {
                        push_kept(&[c as u8], &ALNUM, out);
                    } else {
                        for l in c.to_lowercase().filter(char::is_ascii) {
                            push_kept(&[l as u8], &ALNUM, out);
                        }
                    }
                }
            }
        }
        // Raw types are never normalised.
        _ => out.extend_from_slice(value.as_bytes()),
    }
}

/// Which bytes a normalisation rule keeps.
#[derive(Clone, Copy)]
enum Keep {
    /// `a-z 0-9 . @ -` (after ASCII lowercasing).
    Email,
    /// `0-9`.
    Digits,
    /// `a-z 0-9` (after ASCII lowercasing).
    Alnum,
}

/// What each byte becomes under one rule: its ASCII lowercase where the rule keeps it, `0` where
/// it is dropped (no rule keeps a NUL byte, and every non-ASCII byte is dropped).
const fn byte_table(keep: Keep) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0u8;
    while b < 128 {
        let l = b.to_ascii_lowercase();
        let kept = match keep {
            Keep::Email => {
                l.is_ascii_lowercase() || l.is_ascii_digit() || matches!(l, b'.' | b'@' | b'-')
            }
            Keep::Digits => l.is_ascii_digit(),
            Keep::Alnum => l.is_ascii_alphanumeric(),
        };
        if kept {
            table[b as usize] = l;
        }
        b += 1;
    }
    table
}

const EMAIL: [u8; 256] = byte_table(Keep::Email);
const DIGITS: [u8; 256] = byte_table(Keep::Digits);
const ALNUM: [u8; 256] = byte_table(Keep::Alnum);

/// Appends `bytes` through `table`, dropping the bytes it maps to `0`. Every byte is written
/// and the end moves on only past kept ones: no branch per byte, one length check per value.
fn push_kept(bytes: &[u8], table: &[u8; 256], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len(), 0);
    let dst = &mut out[start..];
    let mut n = 0;
    for &b in bytes {
        let m = table[usize::from(b)];
        dst[n] = m;
        n += usize::from(m != 0);
    }
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: KeyType, v: &str) -> String {
        String::from_utf8(KeyHasher::new().normalised(kind, v).to_vec()).unwrap()
    }

    #[test]
    fn normalisation_table() {
        use KeyType::*;
        let cases: &[(KeyType, &str, &str)] = &[
            // e-mail: trim, lowercase, keep a-z 0-9 . @ -; `+` and spaces go
            (Email, "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
            (
                Email,
                "John.Doe+Promo@Example.com",
                "john.doepromo@example.com",
            ),
            (
                Email,
                "first last@ex-ample.co.uk",
                "firstlast@ex-ample.co.uk",
            ),
            (Email, "o'neil_x@example.com", "oneilx@example.com"),
            (Email, "josé@example.com", "jos@example.com"),
            (Email, "\tUSER@EXAMPLE.ORG\n", "user@example.org"),
            // phone: digits only
            (Phone, "+1 (555) 123-4567", "15551234567"),
            (Phone, "+44 20 7946 0958", "442079460958"),
            (Phone, "001-555-123-4567", "0015551234567"),
            (Phone, "555.123.4567", "5551234567"),
            (Phone, "+49 (0) 30/123 456-78", "4903012345678"),
            (Phone, "tel:+81-3-1234-5678", "81312345678"),
            (Phone, "15551234567", "15551234567"),
            // names, address, city, state: lowercase, keep a-z 0-9, no accent folding (the
            // contract's own examples first)
            (FirstName, "José", "jos"),
            (City, "São Paulo", "sopaulo"),
            (LastName, "Müller", "mller"),
            (FirstName, "JOSÉ", "jos"),
            (FirstName, "  Mary-Jane ", "maryjane"),
            (LastName, "O'Brien-Smith", "obriensmith"),
            (LastName, "Ærøskøbing", "rskbing"),
            (LastName, "Łukasiewicz", "ukasiewicz"),
            (LastName, "Nguyễn", "nguyn"),
            (FirstName, "François", "franois"),
            (Address, "123 Main St., Apt #4", "123mainstapt4"),
            (Address, "Straße 5", "strae5"),
            (City, "Saint-Étienne", "sainttienne"),
            (City, "Zürich", "zrich"),
            (State, "N.Y.", "ny"),
            (State, "Île-de-France", "ledefrance"),
            // combining accents (decomposed form) go too: "José" as J o s e + U+0301
            (FirstName, "Jose\u{301}", "jose"),
            // capitals whose Unicode lowercase is ASCII keep their letter
            (City, "\u{130}stanbul", "istanbul"),
            (Address, "5 \u{212A}ing St", "5kingst"),
            // other scripts vanish, never transliterated
            (City, "Москва", ""),
            (LastName, "李", ""),
            // postal: lowercase, remove all white space
            (Postal, "SW1A 1AA", "sw1a1aa"),
            (Postal, " 94107-1234 ", "94107-1234"),
            (Postal, "K1A\t0B1", "k1a0b1"),
            (Postal, "75 008", "75008"),
            // normalises to nothing
            (Email, "   ", ""),
            (Phone, "n/a", ""),
            (FirstName, "---", ""),
            (Postal, " \t ", ""),
        ];
        for (kind, input, want) in cases {
            assert_eq!(norm(*kind, input), *want, "{kind:?} {input:?}");
        }
    }

    #[test]
    fn byte_rules_keep_what_the_contract_says() {
        use KeyType::*;
        fn plain(v: &str, keep: fn(&u8) -> bool) -> String {
            let kept = v.bytes().map(|b| b.to_ascii_lowercase()).filter(keep);
            String::from_utf8(kept.collect()).unwrap()
        }
        let email = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b".@-".contains(b);
        // Every ASCII character (NUL and controls included), alone and between others.
        for b in 0u8..128 {
            let v = format!("Ab{}9-Z", b as char);
            assert_eq!(norm(Email, &v), plain(&v, email), "{v:?}");
            assert_eq!(norm(Phone, &v), plain(&v, u8::is_ascii_digit), "{v:?}");
            for kind in [FirstName, LastName, Address, City, State] {
                assert_eq!(
                    norm(kind, &v),
                    plain(&v, u8::is_ascii_alphanumeric),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn hashing_table() {
        let mut h = KeyHasher::new();
        let upper = "86E0B9E56C17CC4D12387E1949B85053FBE73BC3CE5A1188713A9D300CC6133D";
        // Expected digests computed with `printf '%s' <normalised> | sha256sum`.
        const JOS: &str = "f854b2aeb789d616b26acff4df9ff7741d09d5f7a63add238201880e5b10bf2b";
        const SOPAULO: &str = "4a287883aa51936209f313e4c62d9b38b41b7df896dfdff33b98dc1a86607668";
        let cases: &[(KeyType, &str, Option<&str>)] = &[
            (
                KeyType::Email,
                " Jane.Doe@Example.com ",
                Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"),
            ),
            (
                KeyType::Email,
                "John.Doe+Promo@Example.com",
                Some("572ed2ef5b9167e51b4278b3e43d1963034132a8ac59c39501d1bdc0d3fc33c4"),
            ),
            (
                KeyType::Phone,
                "+1 (555) 123-4567",
                Some("d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"),
            ),
            (
                KeyType::Phone,
                "1-555-123-4567",
                Some("d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"),
            ),
            // José → "jos" (no accent folding), JOSE → "jose": different hashes.
            (KeyType::FirstName, "José", Some(JOS)),
            (
                KeyType::FirstName,
                "JOSE",
                Some("1ec4ed037766aa181d8840ad04b9fc6e195fd37dedc04c98a5767a67d3758ece"),
            ),
            (KeyType::City, "São Paulo", Some(SOPAULO)),
            (
                KeyType::Postal,
                "SW1A 1AA",
                Some("830e1d4b9838bab1f5c2acdb23e0b502ff13a9832c4632e8d67a1d43d3b7f614"),
            ),
            // already hashed: lowercased, never hashed again (both cases, with stray spaces)
            (
                KeyType::Email,
                "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d",
                Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"),
            ),
            (
                KeyType::Phone,
                upper,
                Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"),
            ),
            (
                KeyType::LastName,
                " 86E0B9E56C17CC4D12387E1949B85053FBE73BC3CE5A1188713A9D300CC6133D\n",
                Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"),
            ),
            // raw types: exactly as given, case and punctuation kept
            (
                KeyType::Maid,
                "EA7583CD-A667-48BC-B806-42ECB2B48606",
                Some("EA7583CD-A667-48BC-B806-42ECB2B48606"),
            ),
            (
                KeyType::RampId,
                " XY1005wXyWPwTbV ",
                Some(" XY1005wXyWPwTbV "),
            ),
            (KeyType::MatchId, upper, Some(upper)),
            (KeyType::Fip, "2001:db8::1", Some("2001:db8::1")),
            // keys that normalise to nothing are dropped
            (KeyType::Email, "  ", None),
            (KeyType::Phone, "unknown", None),
            (KeyType::City, "Москва", None),
            (KeyType::Maid, "   ", None),
        ];
        for (kind, input, want) in cases {
            let got = h.key_value(*kind, input);
            assert_eq!(
                got.as_ref().map(KeyValue::as_str),
                *want,
                "{kind:?} {input:?}"
            );
        }
        // A 63- or 65-character hex string is not a hash: it is normalised and hashed.
        let short = &upper[..63];
        assert_ne!(h.key_value(KeyType::MatchId, short), None);
        assert_eq!(
            h.key_value(KeyType::Email, short).unwrap(),
            KeyValue::Hashed(sha256_hex(short.to_ascii_lowercase().as_bytes()))
        );
    }

    #[test]
    fn type_names_and_flat_keys_parse() {
        for k in KeyType::ALL {
            assert_eq!(KeyType::parse(k.as_str()), Some(k));
            assert_eq!(KeyType::parse(&k.as_str().to_ascii_lowercase()), Some(k));
        }
        assert_eq!(KeyType::parse("firstName"), Some(KeyType::FirstName));
        assert_eq!(KeyType::parse("postal_code"), Some(KeyType::Postal));
        assert_eq!(KeyType::parse("zip"), Some(KeyType::Postal));
        assert_eq!(KeyType::parse("rampId"), Some(KeyType::RampId));
        assert_eq!(KeyType::parse("IDFA"), None);
        assert_eq!(KeyType::parse("a-very-long-unknown-key-name"), None);
    }
}
