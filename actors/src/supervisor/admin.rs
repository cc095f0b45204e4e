//! The supervisor's admin side: a command for one mailbox, and a reload of the whole
//! configuration (added mailboxes start, removed stop, changed restart).

use super::*;

impl Handler<Command> for Supervisor {
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;
    fn handle(&mut self, msg: Command, ctx: &mut Context<Self>) -> Self::Result {
        let refuse = |e| -> Self::Result { Box::pin(actix::fut::ready(Err(e))) };
        if self.shutting_down {
            return refuse(CommandError::ShuttingDown);
        }
        if !self.slots.contains_key(&msg.smtp) {
            return refuse(CommandError::NotFound(msg.smtp));
        }
        let board = self.shared.board.clone();
        match msg.action {
            Action::Restart => {
                tracing::info!(mailbox = %msg.smtp, "restart requested");
                self.shared
                    .metrics
                    .restarts
                    .with_label_values(&["mailbox", RestartCause::Admin.as_str()])
                    .inc();
                board.update(&msg.smtp, |e| e.restarts += 1);
                let old = self.retire(&msg.smtp, ctx);
                let stop = self.stop_all(old.into_iter().collect());
                let smtp = msg.smtp;
                Box::pin(stop.into_actor(self).map(move |(), act, ctx| {
                    act.spawn_mailbox(&smtp, ctx);
                    Ok(())
                }))
            }
            Action::Pause | Action::Resume => {
                let paused = msg.action == Action::Pause;
                let addr = board.update(&msg.smtp, |e| {
                    e.paused = paused;
                    e.addr.clone()
                });
                if let Some(addr) = addr.flatten() {
                    addr.do_send(PauseMailbox(paused));
                }
                Box::pin(actix::fut::ready(Ok(())))
            }
            Action::Resync | Action::Sync => match board.addr(&msg.smtp) {
                Some(addr) => {
                    addr.do_send(MailboxTrigger {
                        folder: None,
                        cause: Cause::Admin,
                        full: msg.action == Action::Resync,
                    });
                    Box::pin(actix::fut::ready(Ok(())))
                }
                None => {
                    let state = board
                        .snapshot(&msg.smtp)
                        .map_or("stopped", |s| s.state.as_str());
                    refuse(CommandError::NotRunning {
                        smtp: msg.smtp,
                        state,
                    })
                }
            },
        }
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ResponseActFuture<Self, Result<ReloadReport, SpecError>>;
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = check_specs(&msg.servers, &msg.mailboxes) {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        // Servers whose settings changed restart all their mailboxes with a new throttle.
        let mut changed_servers = HashSet::new();
        let wanted_servers: HashSet<ServerId> = msg.servers.iter().map(|s| s.id.clone()).collect();
        for spec in &msg.servers {
            match self.servers.get(&spec.id) {
                Some(current) if current.spec == *spec => {}
                Some(_) => {
                    changed_servers.insert(spec.id.clone());
                }
                None => {
                    self.servers.insert(
                        spec.id.clone(),
                        ServerRuntime::new(spec.clone(), &self.shared.metrics),
                    );
                }
            }
        }
        let wanted: HashMap<MailboxId, MailboxSpec> = msg
            .mailboxes
            .into_iter()
            .map(|m| (m.smtp.clone(), m))
            .collect();
        let mut report = ReloadReport::default();
        let mut stopping = Vec::new();
        let mut current: Vec<MailboxId> = self.slots.keys().cloned().collect();
        current.sort();
        for smtp in current {
            let slot = &self.slots[&smtp];
            match wanted.get(&smtp) {
                None => {
                    self.leave_group(&smtp);
                    stopping.extend(self.retire(&smtp, ctx));
                    self.slots.remove(&smtp);
                    self.shared.board.remove(&smtp);
                    report.removed.push(smtp);
                }
                Some(spec) if *spec != slot.spec || changed_servers.contains(&slot.spec.server) => {
                    let spec = spec.clone();
                    self.leave_group(&smtp);
                    stopping.extend(self.retire(&smtp, ctx));
                    let slot = self.slots.get_mut(&smtp).expect("listed above");
                    slot.spec = spec.clone();
                    slot.failures = 0;
                    slot.denied = 0;
                    self.shared.board.update(&smtp, |e| e.spec = spec);
                    report.changed.push(smtp);
                }
                Some(_) => report.unchanged += 1,
            }
        }
        let mut added: Vec<&MailboxSpec> = wanted
            .values()
            .filter(|m| !self.slots.contains_key(&m.smtp))
            .collect();
        added.sort_by(|a, b| a.smtp.cmp(&b.smtp));
        for spec in added {
            report.added.push(spec.smtp.clone());
            self.add(spec.clone());
        }
        for id in &changed_servers {
            let spec = msg
                .servers
                .iter()
                .find(|s| &s.id == id)
                .expect("changed servers come from msg")
                .clone();
            if let Some(mut old) = self
                .servers
                .insert(id.clone(), ServerRuntime::new(spec, &self.shared.metrics))
            {
                old.stop_groups();
            }
        }
        let gone: Vec<ServerId> = self
            .servers
            .keys()
            .filter(|s| !wanted_servers.contains(*s))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut server) = self.servers.remove(&id) {
                server.stop_groups();
            }
        }
        for server in self.servers.values() {
            server.throttle.set_share(self.budget_share);
        }
        tracing::info!(
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            unchanged = report.unchanged,
            "configuration reloaded"
        );
        let stop = self.stop_all(stopping);
        Box::pin(stop.into_actor(self).map(move |(), act, ctx| {
            for smtp in report.changed.iter().chain(&report.added) {
                act.spawn_mailbox(smtp, ctx);
            }
            Ok(report)
        }))
    }
}
