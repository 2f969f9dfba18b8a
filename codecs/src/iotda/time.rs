//! UTC calendar formatting for IoTDA, from Unix seconds (no clock read here).
//!
//! `event_time` is UTC `yyyyMMdd'T'HHmmss'Z'` [DOC:iot_06_v5_3029]; the
//! client-id timestamp is UTC `yyyyMMddHH` ([JAVA] `MqttConnection.java:174`).

use std::fmt;

/// An instant as IoTDA writes it in `event_time`, kept as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    unix_secs: i64,
}

/// A civil UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`] (same source, `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl Civil {
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}

/// A timestamp text that is not `yyyyMMdd'T'HHmmss'Z'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an IoTDA event_time (yyyyMMdd'T'HHmmss'Z')")]
pub struct EventTimeError(pub String);

impl EventTime {
    /// The instant `unix_secs` seconds after 1970-01-01T00:00:00Z.
    pub const fn from_unix(unix_secs: i64) -> Self {
        EventTime { unix_secs }
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub const fn unix_secs(self) -> i64 {
        self.unix_secs
    }

    /// Parses `yyyyMMdd'T'HHmmss'Z'`, checking every field's range.
    pub fn parse(text: &str) -> Result<Self, EventTimeError> {
        let err = || EventTimeError(text.to_owned());
        let b = text.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return Err(err());
        }
        let digits = |r: std::ops::Range<usize>| -> Result<u32, EventTimeError> {
            let s = &text[r];
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            s.parse().map_err(|_| err())
        };
        let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
        let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
        let year = i64::from(year);
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return Err(err());
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
        Ok(EventTime { unix_secs: secs })
    }

    /// The `yyyyMMddHH` (UTC) timestamp used in the MQTT client id.
    pub fn client_id_timestamp(self) -> String {
        let c = Civil::from_unix(self.unix_secs);
        format!("{:04}{:02}{:02}{:02}", c.year, c.month, c.day, c.hour)
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::from_unix(self.unix_secs);
        write!(
            f,
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        // `date -u -d @1450008732 +%Y%m%dT%H%M%SZ` prints 20151213T121212Z.
        let t = EventTime::from_unix(1_450_008_732);
        assert_eq!(t.to_string(), "20151213T121212Z");
        assert_eq!(EventTime::parse("20151213T121212Z").unwrap(), t);
        // `date -u -d @1704164400 +%Y%m%d%H` prints 2024010203.
        assert_eq!(
            EventTime::from_unix(1_704_164_400).client_id_timestamp(),
            "2024010203"
        );
        assert_eq!(EventTime::from_unix(0).to_string(), "19700101T000000Z");
        // A leap day.
        assert_eq!(
            EventTime::parse("20240229T235959Z").unwrap().to_string(),
            "20240229T235959Z"
        );
    }

    #[test]
    fn every_day_round_trips() {
        let mut t = -86_400 * 366 * 3;
        while t < 86_400 * 366 * 200 {
            let e = EventTime::from_unix(t);
            assert_eq!(EventTime::parse(&e.to_string()).unwrap(), e);
            t += 86_400 + 3_599;
        }
    }

    #[test]
    fn malformed_is_rejected() {
        for bad in [
            "",
            "20151212121212Z",
            "20151212T121212",
            "2015-12-12T12:12:12Z",
            "20151312T121212Z",
            "20150229T121212Z",
            "20151212T241212Z",
            "20151212T126012Z",
            "2015121xT121212Z",
            "+0151212T121212Z",
        ] {
            assert!(EventTime::parse(bad).is_err(), "{bad}");
        }
    }
}
