//! The owner's limits: how hard, how hot and when the rig may work.
//!
//! [`Limits`] is what a rig owner sets (in the provider's config file or by
//! flags); [`Limits::validate`] refuses an out-of-range value naming its
//! field. [`Schedule`] parses availability windows in local time
//! (`"mon-fri 22:00-07:00, sat-sun all-day"`). [`Thermal`] pauses above one
//! temperature and resumes below a lower one, so a rig hovering at the
//! threshold does not flap. [`Gate`] combines them into whether the agent may
//! take work now and, if not, why.

use std::fmt;
use std::str::FromStr;

/// What the owner allows. Defaults: the whole device, always, no
/// temperature or power limit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Percent of the time the device may train (1–100); the segment
    /// process rests between steps to keep to it.
    pub max_gpu_share: u8,
    /// Pause work at or above this temperature (°C).
    pub pause_above_c: Option<f32>,
    /// Resume once the temperature is at or below this (°C); must be below
    /// `pause_above_c`. Default: 10 °C below it.
    pub resume_below_c: Option<f32>,
    /// The device's power cap (W).
    pub power_limit_w: Option<u32>,
    /// When the rig may take work.
    pub schedule: Schedule,
    /// Yield the device when another process starts using it.
    pub pause_when_busy: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_gpu_share: 100,
            pause_above_c: None,
            resume_below_c: None,
            power_limit_w: None,
            schedule: Schedule::always(),
            pause_when_busy: false,
        }
    }
}

/// A limit out of range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LimitError {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> LimitError {
    LimitError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl Limits {
    /// Checks every limit's range and their consistency.
    pub fn validate(&self) -> Result<(), LimitError> {
        if !(1..=100).contains(&self.max_gpu_share) {
            return Err(invalid(
                "max_gpu_share",
                format!("{} is not a percentage from 1 to 100", self.max_gpu_share),
            ));
        }
        for (field, t) in [
            ("pause_above_c", self.pause_above_c),
            ("resume_below_c", self.resume_below_c),
        ] {
            if let Some(t) = t {
                if !(30.0..=110.0).contains(&t) {
                    return Err(invalid(field, format!("{t} °C is outside 30–110 °C")));
                }
            }
        }
        match (self.pause_above_c, self.resume_below_c) {
            (None, Some(_)) => {
                return Err(invalid(
                    "resume_below_c",
                    "set pause_above_c too: resuming needs a pause",
                ))
            }
            (Some(p), Some(r)) if r >= p => {
                return Err(invalid(
                    "resume_below_c",
                    format!("{r} °C must be below pause_above_c ({p} °C), or the rig would flap"),
                ))
            }
            _ => {}
        }
        if let Some(w) = self.power_limit_w {
            if !(10..=2000).contains(&w) {
                return Err(invalid(
                    "power_limit_w",
                    format!("{w} W is outside 10–2000 W"),
                ));
            }
        }
        Ok(())
    }

    /// The temperature hysteresis these limits ask for, if any.
    pub fn thermal(&self) -> Option<Thermal> {
        let pause = self.pause_above_c?;
        Some(Thermal::new(
            pause,
            self.resume_below_c.unwrap_or(pause - 10.0),
        ))
    }
}

/// Days of the week, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Availability windows in local time. Empty: always available.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// Days on which a window starts, and its span in minutes since midnight.
/// `end <= start` wraps past midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    days: [bool; 7],
    start: u16,
    end: u16,
}

/// A schedule that does not parse; the message says where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {text:?}: {message} (expected e.g. \"mon-fri 22:00-07:00, sat-sun all-day\")")]
pub struct ScheduleError {
    pub text: String,
    pub message: String,
}

impl Schedule {
    /// Always available.
    pub fn always() -> Schedule {
        Schedule::default()
    }

    /// Whether the rig may work at `minute` (since midnight, local time) of
    /// `weekday` (0 = Monday).
    pub fn is_open(&self, weekday: u8, minute: u16) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let day = usize::from(weekday % 7);
        let yesterday = (day + 6) % 7;
        self.windows.iter().any(|w| {
            if w.start < w.end {
                w.days[day] && (w.start..w.end).contains(&minute)
            } else {
                (w.days[day] && minute >= w.start) || (w.days[yesterday] && minute < w.end)
            }
        })
    }

    /// Whether the rig may work now, by the machine's local time.
    /// How many hours a week the schedule is open.
    pub fn hours_per_week(&self) -> f64 {
        let open = (0..7u8)
            .flat_map(|d| (0..24 * 60u16).map(move |m| (d, m)))
            .filter(|&(d, m)| self.is_open(d, m))
            .count();
        open as f64 / 60.0
    }

    pub fn is_open_now(&self) -> bool {
        self.is_open_at(&SystemClock)
    }

    /// Whether the rig may work at `clock`'s time.
    pub fn is_open_at(&self, clock: &dyn LocalClock) -> bool {
        let (weekday, minute) = clock.now();
        self.is_open(weekday, minute)
    }
}

/// Local time as the schedule reads it: the weekday (0 = Monday) and the
/// minute since midnight.
pub trait LocalClock: Send + Sync + fmt::Debug {
    fn now(&self) -> (u8, u16);
}

/// The machine's clock in its time zone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl LocalClock for SystemClock {
    fn now(&self) -> (u8, u16) {
        use chrono::{Datelike, Timelike};
        let now = chrono::Local::now();
        (
            now.weekday().num_days_from_monday() as u8,
            (now.hour() * 60 + now.minute()) as u16,
        )
    }
}

/// A clock that shows what it is set to, for tests of schedules.
#[derive(Debug, Default)]
pub struct SetClock(std::sync::atomic::AtomicU32);

impl SetClock {
    pub fn new(weekday: u8, minute: u16) -> SetClock {
        let c = SetClock::default();
        c.set(weekday, minute);
        c
    }

    pub fn set(&self, weekday: u8, minute: u16) {
        self.0.store(
            u32::from(weekday % 7) * 1440 + u32::from(minute % 1440),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

impl LocalClock for SetClock {
    fn now(&self) -> (u8, u16) {
        let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
        ((v / 1440) as u8, (v % 1440) as u16)
    }
}

/// A schedule is stored as its text (`"mon-fri 22:00-07:00"`).
impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let fail = |message: String| ScheduleError {
            text: text.to_owned(),
            message,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("always") {
            return Ok(Schedule::always());
        }
        let mut windows = Vec::new();
        for part in trimmed.split(',') {
            let part = part.trim().to_ascii_lowercase();
            let mut words = part.split_whitespace();
            let (Some(days), Some(span), None) = (words.next(), words.next(), words.next()) else {
                return Err(fail(format!(
                    "{part:?} is not DAYS TIMES (like \"mon-fri 22:00-07:00\" or \"sat all-day\")"
                )));
            };
            let days = parse_days(days).map_err(&fail)?;
            let (start, end) = if span == "all-day" {
                (0, 24 * 60)
            } else {
                let (a, b) = span
                    .split_once('-')
                    .ok_or_else(|| fail(format!("{span:?} is not HH:MM-HH:MM or all-day")))?;
                let (start, end) = (parse_time(a).map_err(&fail)?, parse_time(b).map_err(&fail)?);
                if start == end {
                    return Err(fail(format!(
                        "{span:?} is empty; for the whole day write all-day"
                    )));
                }
                (start, end)
            };
            windows.push(Window { days, start, end });
        }
        Ok(Schedule { windows })
    }
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let index = |d: &str| {
        DAYS.iter()
            .position(|x| *x == d)
            .ok_or_else(|| format!("{d:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
    };
    let mut days = [false; 7];
    if s == "daily" || s == "every-day" {
        return Ok([true; 7]);
    }
    // Ranges and single days joined by `+` (`mon-wed+fri`), as a schedule
    // is also printed.
    for item in s.split('+') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[index(item)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.windows.is_empty() {
            return f.write_str("always");
        }
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let days: Vec<&str> = DAYS
                .iter()
                .zip(w.days)
                .filter(|(_, on)| *on)
                .map(|(d, _)| *d)
                .collect();
            f.write_str(&days.join("+"))?;
            if w.start == 0 && w.end == 24 * 60 {
                f.write_str(" all-day")?;
            } else {
                write!(
                    f,
                    " {:02}:{:02}-{:02}:{:02}",
                    w.start / 60,
                    w.start % 60,
                    w.end / 60,
                    w.end % 60
                )?;
            }
        }
        Ok(())
    }
}

/// Pauses at or above `pause_at` and resumes at or below `resume_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thermal {
    pause_at: f32,
    resume_at: f32,
    hot: bool,
}

impl Thermal {
    pub fn new(pause_at: f32, resume_at: f32) -> Thermal {
        Thermal {
            pause_at,
            resume_at,
            hot: false,
        }
    }

    /// Takes a temperature reading; returns whether work is paused.
    pub fn update(&mut self, celsius: f32) -> bool {
        if self.hot {
            if celsius <= self.resume_at {
                self.hot = false;
            }
        } else if celsius >= self.pause_at {
            self.hot = true;
        }
        self.hot
    }
}

/// Keeps training to a share of the time. After each step it rests so that,
/// since the share last changed, busy time over busy plus rested time is
/// `share` percent: `busy × (100 − share) / share` less what it already
/// rested. Counting what was really rested (a sleep overshoots, most of all
/// after short steps) keeps the measured share at the limit, not below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    share: u8,
    busy: std::time::Duration,
    rested: std::time::Duration,
}

impl Pacer {
    /// `share` in percent, 1–100 (100: never rests).
    pub fn new(share: u8) -> Pacer {
        Pacer {
            share: share.clamp(1, 100),
            busy: std::time::Duration::ZERO,
            rested: std::time::Duration::ZERO,
        }
    }

    /// Sets the share; a new share starts a new count.
    pub fn set_share(&mut self, share: u8) {
        let share = share.clamp(1, 100);
        if share != self.share {
            *self = Pacer::new(share);
        }
    }

    /// How long to rest after a step that kept the device busy for `busy`.
    pub fn rest_after(&mut self, busy: std::time::Duration) -> std::time::Duration {
        self.busy += busy;
        let share = u32::from(self.share);
        (self.busy * (100 - share) / share).saturating_sub(self.rested)
    }

    /// Records how long the rest really lasted.
    pub fn rested(&mut self, d: std::time::Duration) {
        self.rested += d;
    }
}

/// Holds a power cap by lowering the share of the time the device trains,
/// when the driver does not let the agent set the cap itself.
///
/// Each reading taken while training scales the share by `limit / power`
/// when the draw is above the limit (the draw falls at least in proportion,
/// since part of it is idle power); below 90% of the limit the share grows
/// by a tenth, back up to the owner's `max_gpu_share`. Between 90% and 100%
/// it holds, so the share settles instead of hunting.
#[derive(Debug, Clone)]
pub struct PowerGovernor {
    limit_w: f32,
    max_share: u8,
    share: u8,
}

impl PowerGovernor {
    pub fn new(limit_w: u32, max_share: u8) -> PowerGovernor {
        let max_share = max_share.clamp(1, 100);
        PowerGovernor {
            limit_w: limit_w as f32,
            max_share,
            share: max_share,
        }
    }

    /// The share the device may train now, in percent.
    pub fn share(&self) -> u8 {
        self.share
    }

    /// Takes a power reading made while training at [`Self::share`];
    /// returns the new share.
    pub fn update(&mut self, power_w: f32) -> u8 {
        if !power_w.is_finite() || power_w <= 0.0 {
            return self.share;
        }
        if power_w > self.limit_w {
            let scaled = (f32::from(self.share) * self.limit_w / power_w).floor();
            self.share = (scaled as u8).clamp(1, self.share.saturating_sub(1).max(1));
        } else if power_w < 0.9 * self.limit_w && self.share < self.max_share {
            let step = (self.share / 10).max(1);
            self.share = self.share.saturating_add(step).min(self.max_share);
        }
        self.share
    }
}

/// Why the agent takes no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Outside the schedule's windows.
    Schedule,
    /// Too hot.
    Temperature,
    /// Another process uses the device.
    OwnerBusy,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Schedule => "schedule",
            PauseReason::Temperature => "temperature",
            PauseReason::OwnerBusy => "owner_busy",
        }
    }
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits applied to readings: whether the agent may take work now.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    thermal: Option<Thermal>,
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate {
            thermal: limits.thermal(),
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `None` when work may go on; else the first reason it may not.
    /// `temperature_c` and `foreign_processes` are the device's readings
    /// (`None`: the device cannot tell); `open` is the schedule's answer for
    /// now.
    pub fn check(
        &mut self,
        open: bool,
        temperature_c: Option<f32>,
        foreign_processes: usize,
    ) -> Option<PauseReason> {
        let hot = match (&mut self.thermal, temperature_c) {
            (Some(t), Some(c)) => t.update(c),
            _ => false,
        };
        if !open {
            Some(PauseReason::Schedule)
        } else if hot {
            Some(PauseReason::Temperature)
        } else if self.limits.pause_when_busy && foreign_processes > 0 {
            Some(PauseReason::OwnerBusy)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    /// A device drawing `idle + (full - idle) × share`.
    fn draw(share: u8) -> f32 {
        50.0 + 250.0 * f32::from(share) / 100.0
    }

    #[test]
    fn the_power_governor_settles_under_the_limit_and_recovers() {
        let mut g = PowerGovernor::new(150, 100);
        // 300 W at full share: it comes down under 150 W and stays.
        let mut shares = Vec::new();
        for _ in 0..10 {
            let s = g.share();
            shares.push(g.update(draw(s)));
        }
        let settled = g.share();
        assert!(draw(settled) <= 150.0, "{shares:?}");
        assert!(draw(settled) >= 0.9 * 150.0 * 0.9, "{shares:?}");
        assert_eq!(shares[8], shares[9], "it settles: {shares:?}");
        // (150 - 50) / 250: at most 40%.
        assert!(settled <= 40, "{settled}");
        // The owner's own share cap is never exceeded, even with room.
        let mut g = PowerGovernor::new(1000, 30);
        for _ in 0..20 {
            let s = g.share();
            g.update(draw(s));
        }
        assert_eq!(g.share(), 30);
        // A cooler GPU (a lower draw) earns its share back step by step.
        let mut g = PowerGovernor::new(150, 100);
        g.update(600.0);
        let low = g.share();
        assert_eq!(low, 25);
        for _ in 0..30 {
            let s = g.share();
            g.update(draw(s) * 0.5);
        }
        assert!(g.share() > low);
        // Readings that mean nothing change nothing.
        let before = g.share();
        assert_eq!(g.update(f32::NAN), before);
        assert_eq!(g.update(0.0), before);
    }

    #[test]
    fn a_schedule_counts_its_hours() {
        assert_eq!(Schedule::always().hours_per_week(), 168.0);
        let s: Schedule = "mon-fri 22:00-07:00, sat-sun all-day".parse().unwrap();
        // Friday night runs into Saturday, which is open all day anyway;
        // Monday before 07:00 would be Sunday night's, and Sunday has none.
        assert_eq!(s.hours_per_week(), 2.0 + 4.0 * 9.0 + 2.0 * 24.0);
    }

    #[test]
    fn windows_past_midnight_belong_to_the_day_they_start() {
        let s: Schedule = "mon-fri 22:00-07:00, sat-sun all-day".parse().unwrap();
        // Monday 23:00 and Tuesday 06:59 are in; Tuesday 07:00 and noon are not.
        assert!(s.is_open(0, at(23, 0)));
        assert!(s.is_open(1, at(6, 59)));
        assert!(!s.is_open(1, at(7, 0)));
        assert!(!s.is_open(1, at(12, 0)));
        // Monday 03:00 would belong to a Sunday night window; Sunday has
        // only its own day.
        assert!(!s.is_open(0, at(3, 0)));
        // Saturday 06:00 is Friday night's window; Saturday noon all-day.
        assert!(s.is_open(5, at(6, 0)));
        assert!(s.is_open(5, at(12, 0)));
        assert!(s.is_open(6, at(23, 59)));
        assert_eq!(
            s.to_string(),
            "mon+tue+wed+thu+fri 22:00-07:00, sat+sun all-day"
        );
        // What it prints reads back as the same schedule (the agent
        // records its limits so).
        assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        let some: Schedule = "mon-wed+fri 08:00-12:00".parse().unwrap();
        assert_eq!(some.to_string(), "mon+tue+wed+fri 08:00-12:00");
    }

    #[test]
    fn daytime_windows_and_wrapping_day_ranges() {
        let s: Schedule = "fri-mon 09:00-17:30".parse().unwrap();
        assert!(s.is_open(4, at(9, 0)));
        assert!(s.is_open(0, at(17, 29)));
        assert!(!s.is_open(0, at(17, 30)));
        assert!(!s.is_open(2, at(12, 0)));
        let always: Schedule = "".parse().unwrap();
        assert!(always.is_open(3, at(4, 0)));
        assert_eq!(always.to_string(), "always");
        let daily: Schedule = "daily 00:00-24:00".parse().unwrap();
        assert!(daily.is_open(6, at(23, 59)));
    }

    #[test]
    fn a_schedule_that_does_not_parse_says_why() {
        for (text, why) in [
            ("mon-fri", "is not DAYS TIMES"),
            ("monday 10:00-12:00", "\"monday\" is not a day"),
            ("mon 25:00-26:00", "\"25:00\" is not a time"),
            ("mon 10:00-10:00", "for the whole day write all-day"),
            ("mon 10-12", "\"10\" is not a time"),
            ("sat all-day extra", "is not DAYS TIMES"),
        ] {
            let e = text.parse::<Schedule>().unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn limits_out_of_range_name_their_field() {
        let cases: [(Limits, &str); 5] = [
            (
                Limits {
                    max_gpu_share: 0,
                    ..Limits::default()
                },
                "max_gpu_share",
            ),
            (
                Limits {
                    max_gpu_share: 120,
                    ..Limits::default()
                },
                "max_gpu_share",
            ),
            (
                Limits {
                    pause_above_c: Some(150.0),
                    ..Limits::default()
                },
                "pause_above_c",
            ),
            (
                Limits {
                    pause_above_c: Some(80.0),
                    resume_below_c: Some(85.0),
                    ..Limits::default()
                },
                "resume_below_c",
            ),
            (
                Limits {
                    power_limit_w: Some(5),
                    ..Limits::default()
                },
                "power_limit_w",
            ),
        ];
        for (limits, field) in cases {
            let e = limits.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn the_pacer_holds_the_share_of_busy_time() {
        use std::time::Duration;
        for share in [1u8, 25, 60, 99, 100] {
            for overshoot in [Duration::ZERO, Duration::from_micros(150)] {
                let mut pacer = Pacer::new(share);
                let (mut busy, mut rest) = (Duration::ZERO, Duration::ZERO);
                // Steps of uneven length, as training gives them, some far
                // shorter than a sleep's overshoot.
                for i in 0..2000u64 {
                    let step = Duration::from_micros(20 + (i * 7919) % 20_000);
                    busy += step;
                    let r = pacer.rest_after(step);
                    if !r.is_zero() {
                        // A sleep lasts longer than asked.
                        let slept = r + overshoot;
                        pacer.rested(slept);
                        rest += slept;
                    }
                }
                let measured = busy.as_secs_f64() / (busy + rest).as_secs_f64();
                let want = f64::from(share) / 100.0;
                assert!(
                    (measured - want).abs() < 1e-3,
                    "{share}% with {overshoot:?} overshoot: {measured}"
                );
            }
        }
        // A new share starts a new count.
        let mut pacer = Pacer::new(50);
        assert_eq!(
            pacer.rest_after(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        pacer.set_share(25);
        assert_eq!(
            pacer.rest_after(Duration::from_millis(10)),
            Duration::from_millis(30)
        );
    }

    #[test]
    fn temperature_pauses_with_hysteresis() {
        let mut t = Thermal::new(83.0, 75.0);
        let readings = [70.0, 82.9, 83.0, 80.0, 76.0, 75.1, 75.0, 79.0, 82.0, 84.0];
        let paused: Vec<bool> = readings.iter().map(|&c| t.update(c)).collect();
        assert_eq!(
            paused,
            [false, false, true, true, true, true, false, false, false, true]
        );
    }

    #[test]
    fn the_gate_names_the_first_reason() {
        let mut g = Gate::new(Limits {
            pause_above_c: Some(80.0),
            pause_when_busy: true,
            ..Limits::default()
        });
        assert_eq!(g.check(true, Some(60.0), 0), None);
        assert_eq!(g.check(true, Some(60.0), 1), Some(PauseReason::OwnerBusy));
        assert_eq!(g.check(true, Some(81.0), 0), Some(PauseReason::Temperature));
        // Still hot above the default resume point (70 °C).
        assert_eq!(g.check(true, Some(75.0), 0), Some(PauseReason::Temperature));
        assert_eq!(g.check(false, Some(60.0), 0), Some(PauseReason::Schedule));
        assert_eq!(g.check(true, Some(69.0), 0), None);
    }
}
