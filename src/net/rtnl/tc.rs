//! Traffic control: the clsact qdisc and direct-action BPF filters on it.
//!
//! The same operations libbpf's `bpf_tc_*` functions make, over one route
//! netlink socket that stays open: attaching the programs of thousands of
//! interfaces is then a request and an answer each, not a socket each.
//! A filter is named by interface, direction, priority and handle, with
//! protocol ETH_P_ALL, as libbpf names its own.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use super::{ErrorKind, Result, Rtnl};

/// ETH_P_ALL in network byte order, as TC filters carry it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

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

/// Where a filter sits: which direction of the clsact qdisc.
fn parent(ingress: bool) -> TcHandle {
    TcHandle { major: TcHandle::CLSACT.major, minor: if ingress { TcHandle::MIN_INGRESS } else { TcHandle::MIN_EGRESS } }
}

fn dir(ingress: bool) -> &'static str {
    if ingress {
        "ingress"
    } else {
        "egress"
    }
}

fn filter_message(index: u32, ingress: bool, priority: u16, handle: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.parent = parent(ingress);
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
        let ctx = || format!("reading the qdiscs of interface {index}");
        match self.exchange(RouteNetlinkMessage::GetQueueDiscipline(clsact_message(index)), 0, &ctx) {
            Ok(_) => Ok(true),
            // ENOENT: no ingress queue at all; EINVAL: an ingress queue
            // whose qdisc is not a clsact.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(false),
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
    pub fn replace_bpf_filter(
        &mut self,
        index: u32,
        ingress: bool,
        priority: u16,
        handle: u32,
        prog_fd: i32,
        name: &str,
    ) -> Result<()> {
        let ctx = || format!("attaching {name} to interface {index} {} (handle {handle:#x}, priority {priority})", dir(ingress));
        let mut m = filter_message(index, ingress, priority, handle);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.ack(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE | NLM_F_REPLACE, &ctx)
    }

    /// The BPF filter at this priority and handle, if there is one (also
    /// None when the interface has no clsact qdisc).
    pub fn bpf_filter(&mut self, index: u32, ingress: bool, priority: u16, handle: u32) -> Result<Option<BpfFilter>> {
        let ctx = || format!("reading the filter of interface {index} {} priority {priority}", dir(ingress));
        let mut m = filter_message(index, ingress, priority, handle);
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

    /// Every BPF filter of one direction of the clsact qdisc (none when
    /// there is no such qdisc).
    pub fn bpf_filters(&mut self, index: u32, ingress: bool) -> Result<Vec<BpfFilter>> {
        let ctx = || format!("listing the filters of interface {index} {}", dir(ingress));
        let mut m = TcMessage::default();
        m.header.index = index as i32;
        m.header.parent = parent(ingress);
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
    pub fn del_filter(&mut self, index: u32, ingress: bool, priority: u16, handle: u32) -> Result<bool> {
        let ctx = || format!("detaching the filter of interface {index} {} priority {priority}", dir(ingress));
        let mut m = filter_message(index, ingress, priority, handle);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        match self.ack(RouteNetlinkMessage::DelTrafficFilter(m), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Invalid) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
