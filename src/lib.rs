//! datapath: an eBPF datapath for container hosts running game servers.
//!
//! Publishes each container's server on a host port (dnat), sends replies
//! back out (snat), answers the containers' ARP (arp) and forces every
//! other connection through a transparent proxy on the host (tproxy), all
//! at TC hooks. `datapathctl` is the command line over this library.

pub mod attach;
pub mod bpf;
pub mod commands;
pub mod loader;
pub mod maps;
pub mod netif;
pub mod netns;
pub mod pins;
