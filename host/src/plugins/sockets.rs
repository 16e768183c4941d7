//! `wasi:sockets` for plugins, as WASI has it but for two things, linked
//! over WASI's own (shadowing it in the linker):
//!
//! - `ip-name-lookup` resolves only the names a plugin's grants name (or an
//!   IP address written out). A lookup of any other name would send the
//!   name to DNS servers outside the grants — a plugin could hand data to
//!   anyone's name server that way, past its `network` list — so it is
//!   refused before any query, as `access-denied`, and reported like any
//!   other denied destination.
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
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use super::sandbox::PluginState;

/// The interface's view of a plugin's store: WASI's sockets and the grants.
pub struct Lookup<'a> {
    sockets: WasiSocketsCtxView<'a>,
    state: LookupGrants<'a>,
}

struct LookupGrants<'a> {
    grants: &'a super::sandbox::Grants,
    log: &'a super::logs::PluginLog,
}

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
                let slot = match state.hooks_socket("TCP socket") {
                    Ok(slot) => slot,
                    Err(_) => return Ok((Err(ErrorCode::NewSocketLimit),)),
                };
                let (mut sockets, _, _) = state.sockets_and_grants();
                match CreateHost::create_tcp_socket(&mut sockets, family) {
                    Ok(socket) => {
                        state.tcp_slots.insert(socket.rep(), slot);
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
                state.tcp_slots.remove(&rep);
                let (mut sockets, _, _) = state.sockets_and_grants();
                HostTcpSocket::drop(&mut sockets, Resource::new_own(rep))
            },
        )?;
    Ok(())
}

impl PluginState {
    fn lookup(&mut self) -> Lookup<'_> {
        let (sockets, grants, log) = self.sockets_and_grants();
        Lookup {
            sockets,
            state: LookupGrants { grants, log },
        }
    }
}

/// Whether `name` may be looked up under `grants`: a granted host (any of
/// its ports), or an address written out (resolved without a query).
fn may_look_up(grants: &super::sandbox::Grants, name: &str) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    grants.allowed.pairs().iter().any(|(h, _)| *h == name)
}

/// Its errors, as WASI's (the interface's functions return them).
impl wasmtime_wasi::p2::bindings::sockets::network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        wasmtime_wasi::p2::bindings::sockets::network::Host::convert_error_code(
            &mut self.sockets,
            error,
        )
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        wasmtime_wasi::p2::bindings::sockets::network::Host::network_error_code(
            &mut self.sockets,
            err,
        )
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::bindings::sockets::network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        if !may_look_up(self.state.grants, &name) {
            let shown: String = name.chars().take(260).collect();
            self.state
                .grants
                .deny(self.state.log, "name lookup", &format!("{shown}:<port>"));
            return Err(ErrorCode::AccessDenied.into());
        }
        Host::resolve_addresses(&mut self.sockets, network, name)
    }
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, stream)
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
        for ok in [
            "irc.example.org",
            "IRC.Example.org.",
            "127.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(may_look_up(&grants, ok), "{ok}");
        }
        for no in ["secret.attacker.example", "example.org", "localhost", ""] {
            assert!(!may_look_up(&grants, no), "{no}");
        }
    }
}
