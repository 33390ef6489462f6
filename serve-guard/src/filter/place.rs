//! Where one interface's filter goes at start: a slot of its libxdp dispatcher, its own XDP link,
//! or TC ingress beside a program that holds the XDP hook outside libxdp's protocol (never by
//! replacing that program).

use super::attach::{self, LinkHandle};
use super::pins::PinLayout;
use super::tc::{self, XdpHolder};
use super::{AttachMode, AttachedInterface, FilterError, dispatcher, error_chain};
use crate::config::{Config, XdpModeSetting};
use aya::programs::{ProgramFd, SchedClassifier, Xdp};
use serve_guard_common::PROGRAM_NAME;
use std::os::fd::AsFd as _;

/// What placing the filter on an interface needs, gathered once per start.
pub(super) struct Placement<'a> {
    pub config: &'a Config,
    pub layout: &'a PinLayout,
    pub program: &'a mut Xdp,
    pub tc_program: &'a mut SchedClassifier,
    /// The TC hook this kernel offers (tcx or clsact).
    pub tc_mode: AttachMode,
    /// In dispatcher mode: the extension program and our config map's id, which tells our
    /// dispatcher slots from others.
    pub dispatcher: Option<(&'a ProgramFd, u32)>,
    /// Interfaces whose XDP hook a program outside the protocol holds, found before the start.
    pub xdp_held: &'a [(String, XdpHolder)],
}

/// The outcome of attaching at XDP with a link of our own.
enum AtXdp {
    Attached(AttachedInterface, LinkHandle),
    /// Another program holds the hook and TC ingress may take the filter instead.
    HeldBy(XdpHolder),
}

impl Placement<'_> {
    /// Puts the filter on one interface; the handle is for a link this process holds open.
    pub fn attach(
        &mut self,
        name: &str,
        ifindex: u32,
    ) -> Result<(AttachedInterface, Option<LinkHandle>), FilterError> {
        let known = self
            .xdp_held
            .iter()
            .find(|(held, _)| held == name)
            .map(|(_, holder)| holder.clone());
        let holder = match known {
            Some(holder) => holder,
            None => {
                if let Some((extension, map_id)) = self.dispatcher
                    && self.layout.find_link(name)?.is_none()
                {
                    let joined = dispatcher::join(
                        extension.as_fd(),
                        name,
                        ifindex,
                        self.config.xdp_mode,
                        self.config.xdp_priority,
                        map_id,
                    )?;
                    return Ok((joined, None));
                }
                match self.xdp_link(name, ifindex)? {
                    AtXdp::Attached(attached, handle) => return Ok((attached, Some(handle))),
                    AtXdp::HeldBy(holder) => holder,
                }
            }
        };
        let (attached, handle) = self.tc_ingress(name, ifindex, holder)?;
        Ok((attached, Some(handle)))
    }

    /// Our own XDP link (adopted, or attached and pinned).
    fn xdp_link(&mut self, name: &str, ifindex: u32) -> Result<AtXdp, FilterError> {
        if self.dispatcher.is_some() {
            // Moving from the link to a dispatcher means taking the link off first: a gap. The
            // interface keeps its link until the filter is detached.
            tracing::warn!(
                interface = %name,
                "{name} keeps the BPF link of an earlier start (xdp_attach = \"link\"); it \
                 joins a dispatcher after `serve-guard detach` and a new start"
            );
        }
        match attach::attach_interface(
            self.program,
            self.layout,
            name,
            ifindex,
            self.config.xdp_mode,
        ) {
            Ok((attached, handle)) => Ok(AtXdp::Attached(attached, handle)),
            Err(FilterError::AnotherProgram { interface, .. }) => {
                let found = XdpHolder::of(ifindex).unwrap_or_default();
                // Another agent's filter (another pin_dir): two agents on one interface is a
                // mistake to point out, not to work around.
                if found.program == PROGRAM_NAME {
                    return Err(FilterError::AnotherServeGuard {
                        interface,
                        id: found.id,
                    });
                }
                if self.config.xdp_mode == XdpModeSetting::Driver {
                    return Err(FilterError::AnotherProgram {
                        interface,
                        holder: format!("program {found}"),
                    });
                }
                Ok(AtXdp::HeldBy(found))
            }
            Err(e) => Err(e),
        }
    }

    /// The same filter at TC ingress, beside the program that holds the XDP hook.
    fn tc_ingress(
        &mut self,
        name: &str,
        ifindex: u32,
        holder: XdpHolder,
    ) -> Result<(AttachedInterface, LinkHandle), FilterError> {
        tracing::warn!(
            interface = %name,
            hook = "tc",
            "{name}: the XDP hook is held by program {holder}, which serve-guard does not \
             replace; filtering at TC ingress ({}) instead, with the same verdicts, on what that \
             program passes up the stack. To filter at XDP beside it, load it through libxdp and \
             set xdp_attach = \"dispatcher\"",
            self.tc_mode.name()
        );
        if self.tc_program.fd().is_err() {
            self.tc_program.load().map_err(|e| FilterError::Load {
                detail: format!("as a TC classifier: {}", error_chain(&e)),
            })?;
        }
        tc::attach_interface(
            self.tc_program,
            self.layout,
            name,
            ifindex,
            self.tc_mode,
            holder,
        )
    }
}
