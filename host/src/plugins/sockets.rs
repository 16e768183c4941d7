//! `wasi:sockets` for plugins, as WASI has it but for two things, linked
//! over WASI's own (shadowing it in the linker):
//!
//! - `ip-name-lookup` resolves only the names a plugin's grants name (or an
//!   IP address written out). A lookup of any other name would send the
//!   name to DNS servers outside the grants — a plugin could hand data to
//!   anyone's name server that way, past its `network` list — so it is
//!   refused before any query, as `access-denied`, and reported like any
//!   other denied destination.
//!   A query (a granted name) runs on a blocking thread, so it holds one of
//!   the plugin's `plugins.max_sockets` slots while its answer stream lives.
//! - `tcp-create-socket` counts each socket against the plugin's
//!   `plugins.max_sockets` (refused as `new-socket-limit` past it), and the
//!   `tcp-socket` resource's destructor frees its slot; the slots an
//!   instance still holds go with the instance.

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, SocketError};

use super::sandbox::{PluginState, SocketsView};

/// The interface's view of a plugin's store: WASI's sockets, the grants
/// and the slots the instance holds.
pub struct Lookup<'a>(SocketsView<'a>);

struct Guarded;

impl HasData for Guarded {
    type Data<'a> = Lookup<'a>;
}

/// The `wasi:sockets` version WASI links (wasmtime-wasi 48).
const SOCKETS: &str = "0.2.12";

/// Replaces WASI's `ip-name-lookup`, `tcp-create-socket` and the
/// `tcp-socket` destructor in `linker` (linked by
/// `wasmtime_wasi::p2::add_to_linker_async` before).
pub fn add_to_linker(
    linker: &mut wasmtime::component::Linker<PluginState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = link(linker);
    linker.allow_shadowing(false);
    r
}

fn link(linker: &mut wasmtime::component::Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::ResourceType;
    use wasmtime_wasi::p2::bindings::sockets::network::IpAddressFamily;
    use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
    use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as CreateHost;
    use wasmtime_wasi::p2::TcpSocket;
    wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::add_to_linker::<PluginState, Guarded>(
        linker,
        |s| s.lookup(),
    )?;
    linker
        .instance(&format!("wasi:sockets/tcp-create-socket@{SOCKETS}"))?
        .func_wrap(
            "create-tcp-socket",
            |mut store: wasmtime::StoreContextMut<'_, PluginState>,
             (family,): (IpAddressFamily,)|
             -> wasmtime::Result<(Result<Resource<TcpSocket>, ErrorCode>,)> {
                let state = store.data_mut();
                let slot = match state.socket_slot("TCP socket") {
                    Ok(slot) => slot,
                    Err(_) => return Ok((Err(ErrorCode::NewSocketLimit),)),
                };
                let v = state.sockets_and_grants();
                let mut wasi = v.wasi;
                match CreateHost::create_tcp_socket(&mut wasi, family) {
                    Ok(socket) => {
                        v.slots.insert(socket.rep(), slot);
                        Ok((Ok(socket),))
                    }
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            },
        )?;
    linker
        .instance(&format!("wasi:sockets/tcp@{SOCKETS}"))?
        .resource(
            "tcp-socket",
            ResourceType::host::<TcpSocket>(),
            |mut store, rep| {
                let state = store.data_mut();
                let mut v = state.sockets_and_grants();
                v.slots.remove(&rep);
                HostTcpSocket::drop(&mut v.wasi, Resource::new_own(rep))
            },
        )?;
    Ok(())
}

impl PluginState {
    fn lookup(&mut self) -> Lookup<'_> {
        Lookup(self.sockets_and_grants())
    }
}

/// What a lookup of a name is under a plugin's grants.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    /// An address written out: resolved without a query.
    Address,
    /// A granted host (any of its ports): a DNS query, on a blocking
    /// thread, so it holds one of the plugin's socket slots while its
    /// answer stream lives.
    Granted,
    Denied,
}

fn query(grants: &super::sandbox::Grants, name: &str) -> Query {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Query::Address;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if grants.allowed.pairs().iter().any(|(h, _)| *h == name) {
        Query::Granted
    } else {
        Query::Denied
    }
}

/// Its errors, as WASI's (the interface's functions return them).
impl wasmtime_wasi::p2::bindings::sockets::network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        wasmtime_wasi::p2::bindings::sockets::network::Host::convert_error_code(
            &mut self.0.wasi,
            error,
        )
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        wasmtime_wasi::p2::bindings::sockets::network::Host::network_error_code(
            &mut self.0.wasi,
            err,
        )
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::bindings::sockets::network::HostNetwork::drop(&mut self.0.wasi, network)
    }
}

impl Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        let v = &mut self.0;
        let slot = match query(v.grants, &name) {
            Query::Address => None,
            Query::Granted => match v.grants.socket(v.log, "name lookup") {
                Ok(slot) => Some(slot),
                Err(_) => return Err(ErrorCode::NewSocketLimit.into()),
            },
            Query::Denied => {
                let shown: String = name.chars().take(260).collect();
                v.grants
                    .deny(v.log, "name lookup", &format!("{shown}:<port>"));
                return Err(ErrorCode::AccessDenied.into());
            }
        };
        let stream = Host::resolve_addresses(&mut v.wasi, network, name)?;
        if let Some(slot) = slot {
            v.slots.insert(stream.rep(), slot);
        }
        Ok(stream)
    }
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        HostResolveAddressStream::resolve_next_address(&mut self.0.wasi, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.0.wasi, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.0.slots.remove(&stream.rep());
        HostResolveAddressStream::drop(&mut self.0.wasi, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_names_and_written_addresses_are_looked_up() {
        let grants = super::super::sandbox::Grants::new(
            "c",
            super::super::sandbox::Network::parse(&[
                "irc.example.org:6697".into(),
                "10.0.0.1:80".into(),
            ]),
            Default::default(),
            Default::default(),
        );
        for ok in ["irc.example.org", "IRC.Example.org."] {
            assert_eq!(query(&grants, ok), Query::Granted, "{ok}");
        }
        for ok in ["127.0.0.1", "::1", "[::1]", "10.0.0.1"] {
            assert_eq!(query(&grants, ok), Query::Address, "{ok}");
        }
        for no in ["secret.attacker.example", "example.org", "localhost", ""] {
            assert_eq!(query(&grants, no), Query::Denied, "{no}");
        }
    }
}
