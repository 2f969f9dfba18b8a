//! Activation windows (issue 15 item 1): the package is delivered at once,
//! and the activation (SMP test + reset, LwM2M Execute /5/0/2, a framed
//! profile's activate message) waits until the child's window is open.
//!
//! A window is a daily span of local time in the configured zone
//! (`[ota] timezone`, a TZif file, RFC 8536), `22:00-05:00` crossing
//! midnight. Local time is read from the zone's UTC offset at each
//! instant, so a daylight-saving change is honoured: on the night the
//! clocks go forward a window that starts in the skipped hour opens when
//! local time first passes its start (at the change), and on the night
//! they go back it opens at the first of the two moments its start reads.

use crate::config::{Window, Zone};

const DAY: i64 = 86_400;

/// A child's activation window in its zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The daily window.
    pub window: Window,
    /// The zone it is read in.
    pub zone: Zone,
}

impl Schedule {
    /// Seconds since local midnight at Unix time `t`.
    fn local_seconds(&self, t: i64) -> i64 {
        (t + self.zone.offset(t)).rem_euclid(DAY)
    }

    /// Whether the window is open at Unix time `t`.
    pub fn contains(&self, t: i64) -> bool {
        let (s, e) = (
            i64::from(self.window.start) * 60,
            i64::from(self.window.end) * 60,
        );
        let now = self.local_seconds(t);
        if s < e {
            s <= now && now < e
        } else {
            now >= s || now < e
        }
    }

    /// The first second at or after Unix time `t` when the window is open.
    pub fn next_open(&self, t: i64) -> i64 {
        let start = i64::from(self.window.start) * 60;
        let mut t = t;
        // Each turn either finds the opening or moves past one change of
        // the zone's offset; zones change at most a few times a year, so a
        // handful of turns covers any window (bounded all the same).
        for _ in 0..16 {
            if self.contains(t) {
                return t;
            }
            let off = self.zone.offset(t);
            let wait = (start - self.local_seconds(t)).rem_euclid(DAY);
            let at = t + wait;
            if self.zone.offset(at) == off {
                return at;
            }
            // The offset changes before `at`: find the change (the offset
            // is `off` at `lo`, another at `hi`) and look again from it.
            let (mut lo, mut hi) = (t, at);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.zone.offset(mid) == off {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            t = hi;
        }
        t
    }

    /// `22:00-05:00 (Europe/Berlin)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.window, self.zone.name)
    }

    /// Unix time `t` as local time: `2026-12-02 22:00 +01:00`.
    pub fn local(&self, t: i64) -> String {
        let off = self.zone.offset(t);
        let l = t + off;
        let (y, m, d) = civil_from_days(l.div_euclid(DAY));
        let s = l.rem_euclid(DAY);
        let sign = if off < 0 { '-' } else { '+' };
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02} {sign}{:02}:{:02}",
            s / 3600,
            s % 3600 / 60,
            off.abs() / 3600,
            off.abs() % 3600 / 60
        )
    }
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(w: &str) -> Schedule {
        Schedule {
            window: Window::parse(w).unwrap().unwrap(),
            zone: Zone::load("Europe/Berlin").expect("tzdata: /usr/share/zoneinfo/Europe/Berlin"),
        }
    }

    /// Unix time of a UTC date and time.
    fn utc(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        // Days from civil, by search from the inverse (tests only).
        let mut z = (y - 1970) * 365;
        while civil_from_days(z) < (y, mo, d) {
            z += 1;
        }
        while civil_from_days(z) > (y, mo, d) {
            z -= 1;
        }
        z * DAY + h * 3600 + mi * 60
    }

    #[test]
    fn a_window_across_midnight_is_open_on_both_sides_of_it() {
        let s = berlin("22:00-05:00");
        // 2026-12-02 (CET, +01:00).
        assert!(!s.contains(utc(2026, 12, 2, 20, 59))); // 21:59
        assert!(s.contains(utc(2026, 12, 2, 21, 0))); // 22:00
        assert!(s.contains(utc(2026, 12, 2, 23, 30))); // 00:30 next day
        assert!(s.contains(utc(2026, 12, 3, 3, 59))); // 04:59
        assert!(!s.contains(utc(2026, 12, 3, 4, 0))); // 05:00 is out
                                                      // From 14:00 it opens at 22:00 the same day; inside, at once.
        let t = utc(2026, 12, 2, 13, 0);
        assert_eq!(s.next_open(t), utc(2026, 12, 2, 21, 0));
        assert_eq!(s.local(s.next_open(t)), "2026-12-02 22:00 +01:00");
        let inside = utc(2026, 12, 3, 1, 0);
        assert_eq!(s.next_open(inside), inside);
        // From 05:00 the next opening is 17 hours later.
        assert_eq!(s.next_open(utc(2026, 12, 3, 4, 0)), utc(2026, 12, 3, 21, 0));
        assert_eq!(s.describe(), "22:00-05:00 (Europe/Berlin)");
    }

    #[test]
    fn daylight_saving_changes_move_the_window_with_local_time() {
        // Summer (CEST, +02:00): 22:00 local is 20:00 UTC.
        let s = berlin("22:00-05:00");
        assert_eq!(s.next_open(utc(2026, 7, 1, 10, 0)), utc(2026, 7, 1, 20, 0));
        assert_eq!(s.local(utc(2026, 7, 1, 20, 0)), "2026-07-01 22:00 +02:00");
        // 2026-03-29: at 01:00 UTC local time jumps from 02:00 to 03:00.
        // A window 02:30-04:00 opens at the jump (03:00 CEST), which is
        // inside it; 02:00-03:00 does not exist that night: the next day.
        let s = berlin("02:30-04:00");
        let before = utc(2026, 3, 28, 23, 0); // 00:00 CET
        assert_eq!(s.next_open(before), utc(2026, 3, 29, 1, 0));
        assert_eq!(s.local(utc(2026, 3, 29, 1, 0)), "2026-03-29 03:00 +02:00");
        let s = berlin("02:00-03:00");
        assert_eq!(s.next_open(before), utc(2026, 3, 30, 0, 0)); // 02:00 CEST
                                                                 // 2026-10-25: at 01:00 UTC local time goes back from 03:00 to
                                                                 // 02:00; 02:30 happens twice and the window opens at the first.
        let s = berlin("02:30-02:45");
        let t = s.next_open(utc(2026, 10, 24, 22, 0));
        assert_eq!(t, utc(2026, 10, 25, 0, 30)); // 02:30 CEST
        assert_eq!(s.local(t), "2026-10-25 02:30 +02:00");
        // Inside the window, then again at its second 02:30 (CET).
        assert!(s.contains(utc(2026, 10, 25, 1, 30)));
        // A window across midnight, asked just before the autumn change.
        let s = berlin("23:00-01:00");
        assert_eq!(
            s.next_open(utc(2026, 10, 25, 12, 0)),
            utc(2026, 10, 25, 22, 0) // 23:00 CET
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
