//! Interfaces, network namespaces and rtnetlink.

pub mod netif;
pub mod netns;
pub mod rtnl;
