//! datapath: an eBPF datapath for container hosts running game servers.
//!
//! Publishes each container's server on a host port (dnat), sends replies
//! back out (snat), answers the containers' ARP (arp) and forces every
//! other connection through a transparent proxy on the host (tproxy).
//! `datapathctl` and `datapath-cni` are thin binaries over this library;
//! docs/ARCHITECTURE.md describes how the pieces fit.

pub mod abi;
pub mod cni;
pub mod kernel;
pub mod maps;
pub mod net;
pub mod ops;
