//! What a stage must be to run in a worker process: [`RemoteTransport`] and
//! [`RemoteBackend`], below both the master's side ([`ProcTransport`](crate::ProcTransport),
//! the pool) and the worker's.

use engine_core::{Backend, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A [`Transport`] that can run in another process: it and its items are serialisable.
pub trait RemoteTransport:
    Transport<
        Input: Serialize + DeserializeOwned + Send + 'static,
        Output: Serialize + DeserializeOwned + Send + 'static,
    > + Serialize
    + DeserializeOwned
    + 'static
{
}

impl<S> RemoteTransport for S where
    S: Transport<
            Input: Serialize + DeserializeOwned + Send + 'static,
            Output: Serialize + DeserializeOwned + Send + 'static,
        > + Serialize
        + DeserializeOwned
        + 'static
{
}

/// A [`Backend`] that can run in another process: it and its items are serialisable.
pub trait RemoteBackend:
    Backend<Input: Serialize + DeserializeOwned + Send + 'static>
    + Serialize
    + DeserializeOwned
    + 'static
{
}

impl<S> RemoteBackend for S where
    S: Backend<Input: Serialize + DeserializeOwned + Send + 'static>
        + Serialize
        + DeserializeOwned
        + 'static
{
}
