//! What operators (people and their tools, such as `cofferctl`) do with
//! secrets, beside reading them: write ([`Put`]), rotate ([`Rotate`]), list
//! and change versions ([`Versions`], [`VersionAction`]), see which
//! workloads applied a version ([`RotationStatus`]), list and revoke the
//! leases of dynamic secrets ([`Leases`]).
//!
//! The calls are methods of [`Client`], the one connection; this module
//! holds their requests and results. Each call needs its capability in the
//! broker's policy (`write`, `rotate`, `list`, `status`, ...), which
//! workloads usually do not have.
//!
//! ```no_run
//! # async fn demo(client: coffer::Client) -> Result<(), coffer::Error> {
//! use coffer::operator::{Encoding, Rotate};
//!
//! let version = client.rotate(Rotate::new("shop/db").encoding(Encoding::Hex)).await?;
//! let status = client.status("shop/db").await?;
//! println!("v{version}: {}/{} applied", status.applied, status.expected);
//! # Ok(()) }
//! ```

mod leases;
mod rotate;
mod status;
mod versions;
mod write;

use coffer_proto::v1;

pub use leases::{Lease, Leases, RenewalState};
pub use rotate::{Encoding, Rotate, Rotated};
pub use status::{RotationStatus, WatchRefusals, WorkloadStatus};
pub use versions::{VersionAction, VersionInfo, VersionState, Versions};
pub use write::Put;

use crate::{Client, Error};

impl Client {
    /// The names under `folder` the caller may list; folders end with `/`
    /// (capability `list`).
    pub async fn list_secrets(&self, folder: &str) -> Result<Vec<String>, Error> {
        let names = self
            .retrying(|| async {
                let request = self.request(v1::ListSecretsRequest {
                    path: folder.to_string(),
                })?;
                self.operator()
                    .list_secrets(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(names.into_inner().names)
    }
}
