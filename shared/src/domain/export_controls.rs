//! Data export labels (destination side) versus data export controls (segment side).
//!
//! Audience Manager's four pairs: a destination says what it *may* do with the data it receives
//! (its labels); a segment says what its data *cannot* be used for (its controls). A label and a
//! control of the same pair conflict, and a conflicting segment may not be delivered to that
//! destination. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// What a destination may do with the data it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExportLabel {
    /// "May enable a combination with personally identifiable information".
    PiiCombination,
    /// "May be used for on-site ad targeting".
    OnsiteAdTargeting,
    /// "May be used for off-site ad targeting".
    OffsiteAdTargeting,
    /// "May be used for on-site personalization".
    OnsitePersonalization,
}

/// What a segment's data cannot be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExportControl {
    /// "Cannot be tied to personally identifiable information".
    NoPiiCombination,
    /// "Cannot be used for on-site ad targeting".
    NoOnsiteAdTargeting,
    /// "Cannot be used for off-site ad targeting".
    NoOffsiteAdTargeting,
    /// "Cannot be used for on-site personalization".
    NoOnsitePersonalization,
}

impl ExportLabel {
    pub const ALL: [ExportLabel; 4] = [
        ExportLabel::PiiCombination,
        ExportLabel::OnsiteAdTargeting,
        ExportLabel::OffsiteAdTargeting,
        ExportLabel::OnsitePersonalization,
    ];

    /// The wire name (`"PII_COMBINATION"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportLabel::PiiCombination => "PII_COMBINATION",
            ExportLabel::OnsiteAdTargeting => "ONSITE_AD_TARGETING",
            ExportLabel::OffsiteAdTargeting => "OFFSITE_AD_TARGETING",
            ExportLabel::OnsitePersonalization => "ONSITE_PERSONALIZATION",
        }
    }

    /// Parses the wire name (exact, as in JSON), or Audience Manager's API name of the pair
    /// ([`AAM_ALIASES`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .or_else(|| aam_pair(s).map(|i| Self::ALL[i]))
    }

    /// The control this label is incompatible with.
    pub fn opposing_control(&self) -> ExportControl {
        match self {
            ExportLabel::PiiCombination => ExportControl::NoPiiCombination,
            ExportLabel::OnsiteAdTargeting => ExportControl::NoOnsiteAdTargeting,
            ExportLabel::OffsiteAdTargeting => ExportControl::NoOffsiteAdTargeting,
            ExportLabel::OnsitePersonalization => ExportControl::NoOnsitePersonalization,
        }
    }
}

impl ExportControl {
    pub const ALL: [ExportControl; 4] = [
        ExportControl::NoPiiCombination,
        ExportControl::NoOnsiteAdTargeting,
        ExportControl::NoOffsiteAdTargeting,
        ExportControl::NoOnsitePersonalization,
    ];

    /// The wire name (`"NO_PII_COMBINATION"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportControl::NoPiiCombination => "NO_PII_COMBINATION",
            ExportControl::NoOnsiteAdTargeting => "NO_ONSITE_AD_TARGETING",
            ExportControl::NoOffsiteAdTargeting => "NO_OFFSITE_AD_TARGETING",
            ExportControl::NoOnsitePersonalization => "NO_ONSITE_PERSONALIZATION",
        }
    }

    /// Parses the wire name (exact, as in JSON), or Audience Manager's API name of the pair
    /// ([`AAM_ALIASES`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .or_else(|| aam_pair(s).map(|i| Self::ALL[i]))
    }
}

/// Audience Manager's API names of the four label/control pairs, in the order of
/// [`ExportLabel::ALL`] and [`ExportControl::ALL`]: accepted on both sides as aliases (`PII` is
/// the label `PII_COMBINATION` on a destination and the control `NO_PII_COMBINATION` on a
/// segment), always answered in adsync's own spelling.
pub const AAM_ALIASES: [&str; 4] = [
    "PII",
    "ONSITE_ADVERTISING",
    "OFFSITE_ADVERTISING",
    "ONSITE_PERSONALIZATION",
];

fn aam_pair(s: &str) -> Option<usize> {
    AAM_ALIASES.iter().position(|a| *a == s)
}

impl std::fmt::Display for ExportLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ExportControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every (label, control) pair that forbids delivering a segment with `controls` to a destination
/// with `labels`, in the labels' order, without duplicates. Empty = delivery allowed.
pub fn conflicts(
    labels: &[ExportLabel],
    controls: &[ExportControl],
) -> Vec<(ExportLabel, ExportControl)> {
    let mut out: Vec<(ExportLabel, ExportControl)> = Vec::new();
    for label in labels {
        let control = label.opposing_control();
        if controls.contains(&control) && !out.iter().any(|(l, _)| l == label) {
            out.push((*label, control));
        }
    }
    out
}

/// A human sentence for the conflicts (for 409 answers and a mapping's `blockedReason`).
/// Names each label and control by their wire names.
pub fn describe_conflicts(conflicts: &[(ExportLabel, ExportControl)]) -> String {
    let parts: Vec<String> = conflicts
        .iter()
        .map(|(l, c)| format!("destination label {l} conflicts with segment control {c}"))
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_label_conflicts_only_with_its_own_control() {
        for label in ExportLabel::ALL {
            for control in ExportControl::ALL {
                let found = conflicts(&[label], &[control]);
                if label.opposing_control() == control {
                    assert_eq!(found, vec![(label, control)]);
                } else {
                    assert!(found.is_empty(), "{label} vs {control}");
                }
            }
        }
        // The pairing is one-to-one.
        let mut seen: Vec<ExportControl> = ExportLabel::ALL
            .iter()
            .map(|l| l.opposing_control())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn several_conflicts_are_all_reported_once() {
        let labels = [
            ExportLabel::OffsiteAdTargeting,
            ExportLabel::PiiCombination,
            ExportLabel::OffsiteAdTargeting,
            ExportLabel::OnsitePersonalization,
        ];
        let controls = [
            ExportControl::NoPiiCombination,
            ExportControl::NoOffsiteAdTargeting,
        ];
        assert_eq!(
            conflicts(&labels, &controls),
            vec![
                (
                    ExportLabel::OffsiteAdTargeting,
                    ExportControl::NoOffsiteAdTargeting
                ),
                (ExportLabel::PiiCombination, ExportControl::NoPiiCombination),
            ]
        );
        assert!(conflicts(&[], &controls).is_empty());
        assert!(conflicts(&labels, &[]).is_empty());
    }

    #[test]
    fn wire_names_round_trip_through_serde_and_parse() {
        for l in ExportLabel::ALL {
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, format!("\"{}\"", l.as_str()));
            assert_eq!(serde_json::from_str::<ExportLabel>(&json).unwrap(), l);
            assert_eq!(ExportLabel::parse(l.as_str()), Some(l));
        }
        for c in ExportControl::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ExportControl>(&json).unwrap(), c);
            assert_eq!(ExportControl::parse(c.as_str()), Some(c));
        }
        assert_eq!(ExportLabel::parse("pii_combination"), None);
        assert_eq!(ExportControl::parse("PII_COMBINATION"), None);
    }

    #[test]
    fn audience_manager_names_are_aliases_of_both_sides_of_each_pair() {
        let pairs = [
            ("PII", "PII_COMBINATION", "NO_PII_COMBINATION"),
            (
                "ONSITE_ADVERTISING",
                "ONSITE_AD_TARGETING",
                "NO_ONSITE_AD_TARGETING",
            ),
            (
                "OFFSITE_ADVERTISING",
                "OFFSITE_AD_TARGETING",
                "NO_OFFSITE_AD_TARGETING",
            ),
            (
                "ONSITE_PERSONALIZATION",
                "ONSITE_PERSONALIZATION",
                "NO_ONSITE_PERSONALIZATION",
            ),
        ];
        for (alias, label, control) in pairs {
            assert_eq!(ExportLabel::parse(alias).unwrap().as_str(), label);
            assert_eq!(ExportControl::parse(alias).unwrap().as_str(), control);
            // The alias pair conflicts like the names it stands for.
            let l = ExportLabel::parse(alias).unwrap();
            assert_eq!(l.opposing_control(), ExportControl::parse(alias).unwrap());
        }
        assert_eq!(ExportLabel::parse("pii"), None);
        assert_eq!(ExportControl::parse("NO_PII"), None);
    }

    #[test]
    fn description_names_label_and_control() {
        let d =
            describe_conflicts(&[(ExportLabel::PiiCombination, ExportControl::NoPiiCombination)]);
        assert_eq!(
            d,
            "destination label PII_COMBINATION conflicts with segment control NO_PII_COMBINATION"
        );
    }
}
