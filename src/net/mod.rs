//! Interfaces, network namespaces, rtnetlink, and wiring a container's
//! veth pair.

pub mod netif;
pub mod netns;
pub mod rtnl;
pub mod wiring;
