//! The built-in beans: the simple server scaffold, a TCP server, the HTTP app adapter, the
//! producer / consumers flow, and a stdin line reader.

#[cfg(feature = "http")]
mod http;
mod pcflow;
mod simple;
mod stdin;
mod tcp;

#[cfg(feature = "http")]
pub use http::HttpServer;
pub use pcflow::{Flow, FlowSendError, FlowStats, PcFlow, PcFlowParams, Producer};
pub use simple::{Simple, SimpleServer};
pub use stdin::{StdinError, StdinParams, StdinReader};
pub use tcp::{
    BoundAddr, ConnectionFuture, ConnectionHandler, Echo, TcpServer, TcpServerError,
    TcpServerParams,
};
