//! The guest-agent calls (reference `pve-api-round2.md` §11, §12). Each may take Proxmox
//! ~3 s (agent not running) to ~8 s (agent hung) to answer: the caller bounds them.
use super::PveClient;
use crate::pve::agent::{LxcInterface, OsInfo, QgaFilesystem, QgaInterface, QgaResult};
use crate::pve::error::PveError;
use crate::pve::types::GuestKind;

impl PveClient {
    async fn agent<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        vmid: u32,
        command: &str,
    ) -> Result<T, PveError> {
        let guest = (node, GuestKind::Qemu, vmid);
        let answer: QgaResult<T> = self.guest_get(guest, &["agent", command]).await?;
        Ok(answer.result)
    }

    /// `GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces`.
    pub async fn agent_interfaces(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Vec<QgaInterface>, PveError> {
        self.agent(node, vmid, "network-get-interfaces").await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/agent/get-osinfo`.
    pub async fn agent_osinfo(&self, node: &str, vmid: u32) -> Result<OsInfo, PveError> {
        self.agent(node, vmid, "get-osinfo").await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/agent/get-fsinfo`.
    pub async fn agent_fsinfo(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Vec<QgaFilesystem>, PveError> {
        self.agent(node, vmid, "get-fsinfo").await
    }

    /// `GET /nodes/{node}/lxc/{vmid}/interfaces` (PVE >= 8.1); `None` for a stopped
    /// container (Proxmox answers `{"data":null}`).
    pub async fn lxc_interfaces(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Option<Vec<LxcInterface>>, PveError> {
        self.guest_get((node, GuestKind::Lxc, vmid), &["interfaces"])
            .await
    }
}
