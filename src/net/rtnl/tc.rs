//! Traffic control: the clsact qdisc and direct-action BPF filters on it.
//!
//! The same operations libbpf's `bpf_tc_*` functions make, over one route
//! netlink socket that stays open: attaching the programs of thousands of
//! interfaces is then a request and an answer each, not a socket each.
//! A filter is named by interface, direction, priority and handle, with
//! protocol ETH_P_ALL, as libbpf names its own.

use netlink_packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use super::{ErrorKind, Result, Rtnl};

/// ETH_P_ALL in network byte order, as TC filters carry it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

/// Qdisc attributes naming the shared blocks a clsact qdisc binds.
const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;

/// A clsact qdisc: the shared filter blocks it is bound to (0: a block of
/// its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Clsact {
    pub ingress_block: u32,
    pub egress_block: u32,
}

/// A BPF filter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// The program's id (TCA_BPF_ID).
    pub prog_id: u32,
    /// The name the filter was given (TCA_BPF_NAME).
    pub name: String,
}

/// Where filters are: one direction of an interface's clsact qdisc, or a
/// shared block (which the kernel lets be changed through its index only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterAt {
    Dev { index: u32, ingress: bool },
    Block(u32),
}

impl FilterAt {
    /// Where one direction of an interface's filters is, given its clsact
    /// qdisc: the shared block it binds for that direction, if any.
    pub fn of(index: u32, ingress: bool, clsact: Option<Clsact>) -> Self {
        let block = clsact.map(|c| if ingress { c.ingress_block } else { c.egress_block }).unwrap_or(0);
        if block != 0 {
            FilterAt::Block(block)
        } else {
            FilterAt::Dev { index, ingress }
        }
    }
}

impl std::fmt::Display for FilterAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterAt::Dev { index, ingress } => {
                write!(f, "interface {index} {}", if *ingress { "ingress" } else { "egress" })
            }
            FilterAt::Block(b) => write!(f, "block {b}"),
        }
    }
}

/// tcm_ifindex of a request that names a shared block (by tcm_parent).
const TCM_IFINDEX_MAGIC_BLOCK: u32 = 0xffff_ffff;

fn at_header(m: &mut TcMessage, at: FilterAt) {
    match at {
        FilterAt::Dev { index, ingress } => {
            m.header.index = index as i32;
            m.header.parent = TcHandle {
                major: TcHandle::CLSACT.major,
                minor: if ingress { TcHandle::MIN_INGRESS } else { TcHandle::MIN_EGRESS },
            };
        }
        FilterAt::Block(b) => {
            m.header.index = TCM_IFINDEX_MAGIC_BLOCK as i32;
            m.header.parent = b.into();
        }
    }
}

fn filter_message(at: FilterAt, priority: u16, handle: u32) -> TcMessage {
    let mut m = TcMessage::default();
    at_header(&mut m, at);
    m.header.handle = handle.into();
    m.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL_BE);
    m
}

fn clsact_message(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.parent = TcHandle::CLSACT;
    m.header.handle = TcHandle { major: TcHandle::CLSACT.major, minor: 0 };
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    m
}

fn bpf_filter_of(m: &TcMessage) -> Option<BpfFilter> {
    let mut kind_bpf = false;
    let mut f = BpfFilter { priority: (m.header.info >> 16) as u16, handle: m.header.handle.into(), prog_id: 0, name: String::new() };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => kind_bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = *id,
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = n.clone(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A dump also lists each priority's classifier itself (no handle, no
    // program): not a filter.
    (kind_bpf && f.prog_id != 0).then_some(f)
}

impl Rtnl {
    /// Whether the interface has a clsact qdisc.
    pub fn has_clsact(&mut self, index: u32) -> Result<bool> {
        Ok(self.clsact(index)?.is_some())
    }

    /// The interface's clsact qdisc, if it has one, with the shared blocks
    /// it is bound to.
    pub fn clsact(&mut self, index: u32) -> Result<Option<Clsact>> {
        let ctx = || format!("reading the qdiscs of interface {index}");
        // NLM_F_ECHO: the kernel answers a qdisc request as a notification,
        // which reaches the asking socket only when it asks for an echo.
        match self.exchange(RouteNetlinkMessage::GetQueueDiscipline(clsact_message(index)), NLM_F_ECHO, &ctx) {
            Ok(reply) => {
                let mut c = Clsact::default();
                for r in &reply {
                    let RouteNetlinkMessage::NewQueueDiscipline(q) = r else { continue };
                    for a in &q.attributes {
                        if let TcAttribute::Other(nla) = a {
                            let mut v = vec![0u8; nla.value_len()];
                            nla.emit_value(&mut v);
                            let n = (v.len() >= 4).then(|| u32::from_ne_bytes([v[0], v[1], v[2], v[3]])).unwrap_or(0);
                            match nla.kind() {
                                TCA_INGRESS_BLOCK => c.ingress_block = n,
                                TCA_EGRESS_BLOCK => c.egress_block = n,
                                _ => {}
                            }
                        }
                    }
                }
                Ok(Some(c))
            }
            // ENOENT: no ingress queue at all; EINVAL: an ingress queue
            // whose qdisc is not a clsact.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds a clsact qdisc whose ingress and egress filters are the shared
    /// blocks with these indices (made with the first qdisc that binds
    /// them, gone with the last): every filter of the block applies to
    /// every interface bound to it. False if the interface has a clsact
    /// qdisc already.
    pub fn add_clsact_shared(&mut self, index: u32, ingress_block: u32, egress_block: u32) -> Result<bool> {
        let ctx = || format!("creating the clsact qdisc on interface {index} (blocks {ingress_block}, {egress_block})");
        let mut m = clsact_message(index);
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_INGRESS_BLOCK, ingress_block.to_ne_bytes().to_vec())));
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_EGRESS_BLOCK, egress_block.to_ne_bytes().to_vec())));
        match self.ack(RouteNetlinkMessage::NewQueueDiscipline(m), NLM_F_CREATE | NLM_F_EXCL, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds a clsact qdisc; false if the interface has one already.
    pub fn add_clsact(&mut self, index: u32) -> Result<bool> {
        let ctx = || format!("creating the clsact qdisc on interface {index}");
        let m = clsact_message(index);
        match self.ack(RouteNetlinkMessage::NewQueueDiscipline(m), NLM_F_CREATE | NLM_F_EXCL, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the clsact qdisc, and every filter on it; false if there
    /// was none (or no interface).
    pub fn del_clsact(&mut self, index: u32) -> Result<bool> {
        let ctx = || format!("removing the clsact qdisc of interface {index}");
        match self.ack(RouteNetlinkMessage::DelQueueDiscipline(clsact_message(index)), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Attaches a program as a direct-action BPF filter, replacing the one
    /// at the same priority and handle in one step (or creating it).
    pub fn replace_bpf_filter(&mut self, at: FilterAt, priority: u16, handle: u32, prog_fd: i32, name: &str) -> Result<()> {
        let ctx = || format!("attaching {name} to {at} (handle {handle:#x}, priority {priority})");
        let mut m = filter_message(at, priority, handle);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.ack(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE | NLM_F_REPLACE, &ctx)
    }

    /// The BPF filter at this priority and handle, if there is one (also
    /// None when there is no clsact qdisc or block).
    pub fn bpf_filter(&mut self, at: FilterAt, priority: u16, handle: u32) -> Result<Option<BpfFilter>> {
        let ctx = || format!("reading the filter of {at} priority {priority}");
        let mut m = filter_message(at, priority, handle);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        match self.exchange(RouteNetlinkMessage::GetTrafficFilter(m), 0, &ctx) {
            Ok(reply) => Ok(reply.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewTrafficFilter(f) => bpf_filter_of(f),
                _ => None,
            })),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every BPF filter there (none when there is no clsact qdisc or
    /// block). An interface bound to a shared block lists the block's.
    pub fn bpf_filters(&mut self, at: FilterAt) -> Result<Vec<BpfFilter>> {
        let ctx = || format!("listing the filters of {at}");
        let mut m = TcMessage::default();
        at_header(&mut m, at);
        match self.exchange(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP, &ctx) {
            Ok(reply) => Ok(reply
                .iter()
                .filter_map(|r| match r {
                    RouteNetlinkMessage::NewTrafficFilter(f) => bpf_filter_of(f),
                    _ => None,
                })
                .collect()),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes the filter at this priority and handle; false if there was
    /// none.
    pub fn del_filter(&mut self, at: FilterAt, priority: u16, handle: u32) -> Result<bool> {
        let ctx = || format!("detaching the filter of {at} priority {priority}");
        let mut m = filter_message(at, priority, handle);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        match self.ack(RouteNetlinkMessage::DelTrafficFilter(m), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
