//! Per-client limits on the routes anyone can call.
//!
//! Sign-ups, the dev faucet and the anonymous provider routes (challenges,
//! registrations, signed nonces) cost the pool a row, money or a signature
//! check, and need no account that could be banned. Each client address
//! gets a budget per route class, refilled at a steady rate (GCRA, through
//! `governor`); past it the pool answers 429 with how long to wait. An
//! IPv6 client is counted by its /64, the block one host usually holds.
//!
//! Behind a reverse proxy every client has the proxy's address: give such a
//! pool limits for all its clients together, or none.

use crate::error::PoolError;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// How much one client address may ask of the pool's open routes; `0`
/// lifts a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Accounts one address may create an hour (`POST /v1/accounts`).
    pub signups_per_hour: u32,
    /// Faucet calls one address may make an hour (dev pools).
    pub faucet_per_hour: u32,
    /// Challenges, registrations and signed nonces one address may ask for a
    /// minute.
    pub anonymous_per_minute: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            signups_per_hour: 30,
            faucet_per_hour: 120,
            anonymous_per_minute: 120,
        }
    }
}

impl ThrottleConfig {
    /// No limits (a pool only its operator reaches).
    pub fn unlimited() -> ThrottleConfig {
        ThrottleConfig {
            signups_per_hour: 0,
            faucet_per_hour: 0,
            anonymous_per_minute: 0,
        }
    }
}

/// The classes of open routes, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Signup,
    Faucet,
    Anonymous,
}

type Limiter = DefaultKeyedRateLimiter<IpAddr>;

/// The pool's limiters, one per route class.
pub(crate) struct Throttle {
    signup: Option<Limiter>,
    faucet: Option<Limiter>,
    anonymous: Option<Limiter>,
}

fn limiter(n: u32, per: fn(NonZeroU32) -> Quota) -> Option<Limiter> {
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(per(n)))
}

/// The address a client is counted by: itself, or its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            signup: limiter(config.signups_per_hour, Quota::per_hour),
            faucet: limiter(config.faucet_per_hour, Quota::per_hour),
            anonymous: limiter(config.anonymous_per_minute, Quota::per_minute),
        }
    }

    /// Counts one request of `class` from `client`; refuses it with
    /// [`PoolError::TooManyRequests`] past the budget. A request without a
    /// client address (served in-process, not over a socket) is not counted.
    pub(crate) fn check(&self, class: RouteClass, client: Option<IpAddr>) -> Result<(), PoolError> {
        let limiter = match class {
            RouteClass::Signup => &self.signup,
            RouteClass::Faucet => &self.faucet,
            RouteClass::Anonymous => &self.anonymous,
        };
        let (Some(limiter), Some(ip)) = (limiter, client) else {
            return Ok(());
        };
        limiter.check_key(&client_key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            PoolError::TooManyRequests(format!(
                "too many requests from {ip}; retry in {} s",
                wait.as_secs().max(1)
            ))
        })
    }

    /// Forgets clients whose budgets are full again (run now and then, so
    /// the tables stay as small as the set of recent clients).
    pub(crate) fn prune(&self) {
        for limiter in [&self.signup, &self.faucet, &self.anonymous]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_budget_is_refused_and_others_are_not() {
        let t = Throttle::new(ThrottleConfig {
            signups_per_hour: 3,
            ..ThrottleConfig::unlimited()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            t.check(RouteClass::Signup, Some(a)).unwrap();
        }
        let err = t.check(RouteClass::Signup, Some(a)).unwrap_err();
        assert!(matches!(err, PoolError::TooManyRequests(_)), "{err}");
        t.check(RouteClass::Signup, Some(b)).unwrap();
        // Other classes and unlimited ones are counted apart.
        t.check(RouteClass::Faucet, Some(a)).unwrap();
        t.check(RouteClass::Signup, None).unwrap();
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let t = Throttle::new(ThrottleConfig {
            anonymous_per_minute: 2,
            ..ThrottleConfig::unlimited()
        });
        t.check(RouteClass::Anonymous, Some("2001:db8::1".parse().unwrap()))
            .unwrap();
        t.check(
            RouteClass::Anonymous,
            Some("2001:db8::ffff".parse().unwrap()),
        )
        .unwrap();
        assert!(t
            .check(
                RouteClass::Anonymous,
                Some("2001:db8::2:3".parse().unwrap())
            )
            .is_err());
        t.check(
            RouteClass::Anonymous,
            Some("2001:db8:0:1::1".parse().unwrap()),
        )
        .unwrap();
    }
}
