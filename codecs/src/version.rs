//! Firmware version normalisation and comparison: the one rule every engine
//! and the OTA job use to decide whether a child runs the target version
//! ([`Policy`]).
//!
//! IoTDA's target `version` is free text set by the operator ("V1.2.3";
//! docs/protocols/iotda.md §4.4, §4.6: the version reported after the upgrade must equal
//! the package's). SMP devices report the MCUboot header version as
//! `major.minor.revision`, with the build number as a fourth dot component
//! when non-zero (zephyr `subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt_util.c`
//! `img_mgmt_ver_str`), while imgtool writes it as `1.2.3+4`
//! (mcuboot `scripts/imgtool/version.py`). LwM2M devices report /3/0/3 as
//! free text, framed devices whatever their profile's version field holds.
//!
//! # Normalisation ([`Policy::Normalised`], the default)
//! 1. Surrounding whitespace is trimmed.
//! 2. One leading `v` or `V` is dropped.
//! 3. The rest is split at `.` and `+`; when every part is a non-empty run
//!    of ASCII digits that fits `u64`, the version is numeric: parts compare
//!    as numbers (`01` = `1`), and missing trailing parts count as 0
//!    (`1.2` = `1.2.0` = `1.2.0.0`, `1.2.3+4` = `1.2.3.4`).
//! 4. Otherwise (`1.2.3-rc1`, `build-77`) the trimmed text after step 2 is
//!    compared exactly, case included.
//!
//! [`Policy::Exact`] compares the two strings byte for byte.
//!
//! # What is reported
//! A report's `version` is the version the child runs now. When the policy
//! says it is the target, the report carries the platform's own target
//! string ([`Policy::as_reported`]): the platform compares the reported
//! version with the package's (§4.6), and a child reading `v2.0.0` for
//! target `2.0.0` has reached it.

use std::cmp::Ordering;

/// How a version a child reports is compared with the target: config
/// `[ota] version_match` and the per-child `version_match`
/// (docs/config.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Byte-for-byte equality.
    Exact,
    /// The normalisation in the module doc.
    #[default]
    Normalised,
}

impl Policy {
    /// The names the config file uses.
    pub const NAMES: [&'static str; 2] = ["normalised", "exact"];

    /// The config name: `"normalised"` or `"exact"`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Exact => "exact",
            Policy::Normalised => "normalised",
        }
    }

    /// Parses a config name (see [`Policy::NAMES`]).
    pub fn parse(name: &str) -> Option<Policy> {
        match name {
            "exact" => Some(Policy::Exact),
            "normalised" => Some(Policy::Normalised),
            _ => None,
        }
    }

    /// Whether the version a child reports is the target version.
    pub fn same(&self, target: &str, reported: &str) -> bool {
        match self {
            Policy::Exact => target == reported,
            Policy::Normalised => normalise(target) == normalise(reported),
        }
    }

    /// The version to put in a report for a child that reports `reported`:
    /// the platform's `target` string when [`Policy::same`] says they are
    /// equal, else what the child reported.
    pub fn as_reported(&self, target: &str, reported: &str) -> String {
        if self.same(target, reported) {
            target.to_owned()
        } else {
            reported.to_owned()
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A version after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Normalised {
    /// Numeric parts with trailing zeros removed (`1.2.0` is `[1, 2]`).
    Numeric(Vec<u64>),
    /// Text that is not purely numeric, trimmed and without a leading v/V.
    Text(String),
}

/// Normalises a version string (see the module doc).
pub fn normalise(version: &str) -> Normalised {
    let t = version.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    let parts: Option<Vec<u64>> = t
        .split(['.', '+'])
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect();
    match parts {
        Some(mut n) => {
            while n.last() == Some(&0) {
                n.pop();
            }
            Normalised::Numeric(n)
        }
        None => Normalised::Text(t.to_owned()),
    }
}

/// Orders two numeric versions (`None` when either is not numeric).
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    match (normalise(a), normalise(b)) {
        (Normalised::Numeric(x), Normalised::Numeric(y)) => {
            let n = x.len().max(y.len());
            let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
            Some(
                (0..n)
                    .map(|i| get(&x, i).cmp(&get(&y, i)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iotda_text_against_smp_reports() {
        let n = Policy::Normalised;
        let matches = |a: &str, b: &str, p: Policy| p.same(a, b);
        assert!(matches("V1.2.3", "1.2.3", n));
        assert!(matches(" v1.2.3\n", "1.2.3", n));
        assert!(matches("V1.2", "1.2.0", n));
        assert!(matches("1.2.3.4", "1.2.3+4", n));
        assert!(matches("V1.2.3", "1.2.3.0", n));
        assert!(matches("1.02.3", "1.2.3", n));
        assert!(!matches("V1.2.3", "1.2.4", n));
        assert!(!matches("V1.2.3", "1.2.3.4", n));
        assert!(!matches("1.10", "1.1", n));
        assert!(!matches("", "1.0", n));
        assert!(matches("", "", n));
        assert!(matches("0", "0.0.0", n));
    }

    #[test]
    fn text_versions_compare_exactly() {
        let n = Policy::Normalised;
        let matches = |a: &str, b: &str, p: Policy| p.same(a, b);
        assert!(matches("V1.2.3-rc1", "1.2.3-rc1", n));
        assert!(!matches("1.2.3-rc1", "1.2.3-RC1", n));
        assert!(!matches("1.2.3-rc1", "1.2.3", n));
        assert!(!matches("1..2", "1.0.2", n));
        assert!(!matches("1.2.", "1.2", n));
        assert!(!matches(
            "99999999999999999999",
            "99999999999999999999.0",
            n
        ));
        assert!(matches("build-77", " build-77 ", n));
        assert_eq!(normalise("1.2.3-rc1"), Normalised::Text("1.2.3-rc1".into()));
        assert_eq!(normalise("V01.2.0"), Normalised::Numeric(vec![1, 2]));
        assert_eq!(normalise("vv1"), Normalised::Text("v1".into()));
    }

    #[test]
    fn exact_policy_is_bytewise() {
        let matches = |a: &str, b: &str, p: Policy| p.same(a, b);
        assert!(matches("V1.2.3", "V1.2.3", Policy::Exact));
        assert!(!matches("V1.2.3", "1.2.3", Policy::Exact));
        assert!(!matches("1.2.3 ", "1.2.3", Policy::Exact));
    }

    #[test]
    fn reports_carry_the_target_string_when_the_policy_says_equal() {
        let n = Policy::Normalised;
        assert_eq!(n.as_reported("2.0.0", "v2.0.0"), "2.0.0");
        assert_eq!(n.as_reported("V1.2", "1.2.0"), "V1.2");
        assert_eq!(n.as_reported("2.0.0", "v1.0.0"), "v1.0.0");
        assert_eq!(Policy::Exact.as_reported("2.0.0", "v2.0.0"), "v2.0.0");
        assert_eq!(Policy::Exact.as_reported("2.0.0", "2.0.0"), "2.0.0");
    }

    #[test]
    fn config_names_round_trip() {
        assert_eq!(Policy::default(), Policy::Normalised);
        for name in Policy::NAMES {
            let p = Policy::parse(name).unwrap();
            assert_eq!(p.name(), name);
            assert_eq!(p.to_string(), name);
            let de: Policy = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(de, p);
        }
        assert_eq!(Policy::parse("Exact"), None);
        assert!(serde_json::from_str::<Policy>("\"fuzzy\"").is_err());
    }

    #[test]
    fn ordering() {
        assert_eq!(compare("V1.2.10", "1.2.9"), Some(Ordering::Greater));
        assert_eq!(compare("1.2", "1.2.0.0"), Some(Ordering::Equal));
        assert_eq!(compare("1.2.3+4", "1.2.3.5"), Some(Ordering::Less));
        assert_eq!(compare("1.2.3-rc1", "1.2.3"), None);
    }

    proptest! {
        // A fixed seed: the same cases every run.
        #![proptest_config(ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7e25_1011),
            ..ProptestConfig::default()
        })]

        #[test]
        fn mcuboot_versions_match_their_prefixed_forms(
            major in 0u8.., minor in 0u8.., rev in 0u16.., build in 0u32..,
        ) {
            // What Zephyr's img_mgmt_ver_str reports for a header version.
            let reported = if build == 0 {
                format!("{major}.{minor}.{rev}")
            } else {
                format!("{major}.{minor}.{rev}.{build}")
            };
            let plus = format!("V{major}.{minor}.{rev}+{build}");
            prop_assert!(Policy::Normalised.same(&plus, &reported));
            let prefixed = format!(" v{reported} ");
            prop_assert!(Policy::Normalised.same(&prefixed, &reported));
            let other = format!("{major}.{minor}.{}", u32::from(rev) + 1);
            prop_assert!(!Policy::Normalised.same(&other, &reported));
            prop_assert_eq!(Policy::Normalised.as_reported(&plus, &reported), plus);
        }

        #[test]
        fn matching_is_an_equivalence(a in "[vV ]?[0-9.+a-z]{0,8}", b in "[0-9.]{0,6}") {
            let n = Policy::Normalised;
            prop_assert!(n.same(&a, &a));
            prop_assert_eq!(n.same(&a, &b), n.same(&b, &a));
            if n.same(&a, &b) {
                prop_assert!(compare(&a, &b).is_none_or(|o| o.is_eq()));
            }
        }
    }
}
