//! The built-in Proxmox VE simulator.
