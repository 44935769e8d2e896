//! Files put into a container before it starts: a tar stream Docker unpacks
//! inside the container's own view of its filesystem (its volumes included), so
//! no entry can reach a host file.

use bytes::Bytes;
use futures_util::Stream;

use super::{Docker, DockerError};

impl Docker {
    /// Unpacks the tar `body` at `path` in the (created, not yet started) container.
    pub async fn upload(
        &self,
        name: &str,
        path: &str,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), DockerError> {
        let options = bollard::query_parameters::UploadToContainerOptions {
            path: path.to_owned(),
            ..Default::default()
        };
        self.client
            .upload_to_container(name, Some(options), bollard::body_try_stream(body))
            .await
            .map_err(|source| DockerError::Upload {
                name: name.to_owned(),
                path: path.to_owned(),
                source,
            })
    }
}
