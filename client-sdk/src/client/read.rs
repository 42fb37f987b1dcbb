//! Reading secrets: one, one as text or JSON, a given version, several at
//! once. Each is retried per the client's [`RetryPolicy`](crate::RetryPolicy).

use coffer_proto::v1;
use secrecy::SecretString;

use super::Client;
use crate::{Code, Error, Secret};

impl Client {
    /// The current version of the secret at `path` (`app/db` or `app/db#key`).
    pub async fn get(&self, path: &str) -> Result<Secret, Error> {
        self.get_version(path, None).await
    }

    /// The current value at `path` as text (UTF-8), held in a zeroizing
    /// string. A map secret needs `path#key`.
    pub async fn get_str(&self, path: &str) -> Result<SecretString, Error> {
        let secret = self.get(path).await?;
        Ok(SecretString::from(secret.expose_str()?.to_string()))
    }

    /// The current value at `path` decoded as JSON into `T` (see
    /// [`Secret::json`]): a JSON document, or a map secret's keys as fields.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.get(path).await?.json()
    }

    /// A given version of the secret at `path`, or the current one for `None`.
    pub async fn get_version(&self, path: &str, version: Option<u64>) -> Result<Secret, Error> {
        let response = self
            .retrying(|| async {
                let request = self.request(v1::GetSecretRequest {
                    path: path.to_string(),
                    version,
                })?;
                self.broker()
                    .get_secret(request)
                    .await
                    .map_err(Error::status)
            })
            .await?
            .into_inner();
        response
            .secret
            .ok_or(Error::InvalidResponse("response without a secret"))?
            .try_into()
    }

    /// Several secrets in one round trip; each item succeeds or fails alone.
    pub async fn get_many<I, S>(&self, paths: I) -> Result<Vec<Result<Secret, Error>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let requests: Vec<v1::GetSecretRequest> = paths
            .into_iter()
            .map(|p| v1::GetSecretRequest {
                path: p.into(),
                version: None,
            })
            .collect();
        let request = self.request(v1::GetSecretsRequest { requests })?;
        let response = self
            .broker()
            .get_secrets(request)
            .await
            .inspect_err(|status| self.refused(status))
            .map_err(Error::status)?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|item| match item.result {
                Some(v1::secret_result::Result::Secret(s)) => Secret::try_from(s),
                Some(v1::secret_result::Result::Error(e)) => {
                    Err(Error::from_code(Code::from_i32(e.code), e.message))
                }
                None => Err(Error::InvalidResponse("batch item without a result")),
            })
            .collect())
    }
}
