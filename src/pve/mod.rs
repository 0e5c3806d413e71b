//! The Proxmox VE HTTP boundary.
