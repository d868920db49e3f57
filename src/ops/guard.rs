//! `guard` commands: deny lists, limits, blocked sources. Every one of them
//! first removes expired deny entries (the program already ignores them),
//! so the tries hold only what still matters.

use anyhow::Result;

use crate::kernel::pins::PinRoot;
use crate::maps::guard::{Blocked, Cidr, DenyEntry, Guard, Limit, LimitChange};
use crate::maps::Change;

fn open(pins: &PinRoot) -> Result<Guard> {
    let g = Guard::open(pins)?;
    g.sweep()?;
    Ok(g)
}

/// `guard deny add <cidr> [--for SECONDS]`.
pub fn deny_add(pins: &PinRoot, cidr: &Cidr, for_secs: Option<u64>) -> Result<Change> {
    open(pins)?.deny_add(cidr, for_secs)
}

/// `guard deny del <cidr>`: deleting what is not there succeeds.
pub fn deny_del(pins: &PinRoot, cidr: &Cidr) -> Result<Change> {
    open(pins)?.deny_del(cidr)
}

/// `guard deny list`.
pub fn deny_list(pins: &PinRoot) -> Result<Vec<DenyEntry>> {
    open(pins)?.deny_list()
}

/// `guard limit set ... [--port P]`.
pub fn limit_set(pins: &PinRoot, port: Option<u16>, ch: &LimitChange) -> Result<Limit> {
    open(pins)?.limit_set(port, ch)
}

/// `guard limit get [--port P]`: one scope, or every scope with limits.
pub fn limit_get(pins: &PinRoot, port: Option<u16>) -> Result<Vec<Limit>> {
    let g = open(pins)?;
    match port {
        Some(p) => Ok(g.limit_get(Some(p))?.into_iter().collect()),
        None => g.limit_list(),
    }
}

/// `guard limit clear [--port P]`.
pub fn limit_clear(pins: &PinRoot, port: Option<u16>) -> Result<Change> {
    open(pins)?.limit_clear(port)
}

/// `guard list-blocked`.
pub fn list_blocked(pins: &PinRoot) -> Result<Vec<Blocked>> {
    open(pins)?.blocked()
}
