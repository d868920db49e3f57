//! Interfaces and network namespaces.

pub mod netif;
pub mod netns;
