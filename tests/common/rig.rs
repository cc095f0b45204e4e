//! An engine rig: ews-sim as Exchange, the business database with the state store in it
//! (SQLite or PostgreSQL), the change feed, and steps run directly (no actors), so a test says
//! exactly which step moves what. Two tenants: user1 (operator 1) in tenant 1, user2
//! (operator 2) in tenant 2; each tenant's shared contacts live in "<tenant> (CRM)".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ews::items::Item;
use ews::ops::{CreateItem, DeleteItem, DeleteType, FindItem, GetItem, View};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};
use ews_sim::server::{self, Running, SimConfig};
use mailsync::config::{Area, AreaConfig, BreakerLimits, InitialSync, Leading};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Engine, MailboxSetup};
use mailsync::sync::feed::{Feed, Routes};
use mailsync_actors::{
    Cause, Causes, MailboxSpec, StepContext, StepReport, StepRequest, SyncPort, Throttle,
    ThrottleSettings,
};

use super::exec;

/// What a rig is made of.
#[derive(Clone)]
pub struct RigOptions {
    /// Enabled areas (all mailboxes).
    pub areas: Vec<Area>,
    /// The leading system of every area.
    pub leading: Leading,
    /// What a folder's first start does.
    pub initial_sync: InitialSync,
    /// The breaker's limits.
    pub breaker: BreakerLimits,
    /// Ambiguous first-contact matches are synced as separate records.
    pub sync_ambiguous: bool,
    /// PostgreSQL instead of SQLite.
    pub postgres: bool,
    /// The state store apart from the business database (a SQLite file), so a CRM row and
    /// its mapping are two writes.
    pub state_apart: bool,
    /// Record every request into this directory.
    pub record: Option<std::path::PathBuf>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            areas: vec![Area::Contacts, Area::Calendar, Area::Tasks],
            leading: Leading::Crm,
            initial_sync: InitialSync::CrmToExchange,
            breaker: BreakerLimits::default(),
            sync_ambiguous: false,
            postgres: false,
            state_apart: false,
            record: None,
        }
    }
}

/// The rig.
pub struct Rig {
    /// The business database (the state store too, unless apart).
    pub db: Db,
    /// The state store.
    pub state: Db,
    /// The simulator.
    pub sim: Running,
    /// The engine.
    pub engine: Engine,
    /// The change feed.
    pub feed: Feed,
    /// A client as the service account.
    pub client: ews::Client,
    /// The server's throttle.
    pub throttle: Throttle,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
    _state_dir: Option<tempfile::TempDir>,
}

/// The two mailboxes.
pub const USERS: [&str; 2] = ["user1@example.com", "user2@example.com"];

impl Rig {
    /// A rig; `None` when PostgreSQL was asked for and is missing outside CI.
    pub async fn new(opts: RigOptions) -> Option<Rig> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (db, pg_name, dir) = if opts.postgres {
            let (name, url) = super::postgres_db("rig").await?;
            (Db::connect(&url, 5).await.unwrap(), Some(name), None)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("crm.db").display());
            (Db::connect(&url, 5).await.unwrap(), None, Some(dir))
        };
        db.migrate(MigrationSet::Crm).await.unwrap();
        let (state, state_dir) = if opts.state_apart {
            let dir = tempfile::tempdir().unwrap();
            (super::sqlite_state(dir.path()).await.0, Some(dir))
        } else {
            db.migrate(MigrationSet::State).await.unwrap();
            (db.clone(), None)
        };
        exec(
            &db,
            "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH'), (2, 'Andere AG')",
        )
        .await;
        exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com'), (2, 2, '2001', 'Bernd', 'user2@example.com')").await;
        let sim = server::start(SimConfig {
            mailboxes: 2,
            record: opts.record.clone(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let client = super::sim_client(&sim);
        let telemetry = Telemetry::new();
        let engine = Engine::new(
            db.clone(),
            state.clone(),
            !opts.state_apart,
            telemetry.service.clone(),
        );
        let areas: BTreeMap<Area, AreaConfig> = opts
            .areas
            .iter()
            .map(|a| {
                (
                    *a,
                    AreaConfig {
                        leading: opts.leading,
                        categories: vec![],
                    },
                )
            })
            .collect();
        let setups = USERS
            .iter()
            .enumerate()
            .map(|(i, smtp)| MailboxSetup {
                smtp: (*smtp).into(),
                client: Arc::new(client.clone()),
                target: ews::Target::impersonating(smtp),
                operator: format!("{}001", i + 1),
                tenant: Some(i as i64 + 1),
                shared_folder_name: if i == 0 {
                    "Muster GmbH (CRM)"
                } else {
                    "Andere AG (CRM)"
                }
                .into(),
                areas: areas.clone(),
                mail: Default::default(),
                smtp_relay: None,
                initial_sync: opts.initial_sync,
                breaker: opts.breaker,
                sync_ambiguous: opts.sync_ambiguous,
            })
            .collect();
        engine.set_mailboxes(setups);
        let routes = Routes {
            by_operator: [(1, USERS[0].into()), (2, USERS[1].into())]
                .into_iter()
                .collect(),
            shared_contacts: [(1, vec![USERS[0].into()]), (2, vec![USERS[1].into()])]
                .into_iter()
                .collect(),
            areas: USERS
                .iter()
                .map(|u| ((*u).into(), opts.areas.iter().copied().collect()))
                .collect(),
        };
        let feed = Feed::new(db.clone(), state.clone(), routes, Duration::from_millis(20));
        feed.start_at_end_if_new().await.unwrap();
        let throttle = Throttle::new(
            "ex1".into(),
            ThrottleSettings {
                requests_per_second: 1000.0,
                burst: 1000,
                max_concurrent: 10,
            },
            telemetry.runtime.clone(),
        );
        let rig = Rig {
            db,
            state,
            sim,
            engine,
            feed,
            client,
            throttle,
            pg_name,
            _dir: dir,
            _state_dir: state_dir,
        };
        for u in USERS {
            rig.open(u).await;
        }
        Some(rig)
    }

    /// Opens a mailbox (as a start does).
    pub async fn open(&self, smtp: &str) {
        let spec = MailboxSpec {
            smtp: smtp.into(),
            server: "ex1".into(),
            fingerprint: 0,
        };
        self.engine
            .open_mailbox(&spec, StepContext::new(self.throttle.clone()))
            .await
            .unwrap_or_else(|e| panic!("opening {smtp}: {e}"));
    }

    /// Drops the rig's databases.
    pub async fn finish(self) {
        self.db.close().await;
        self.state.close().await;
        self.sim.stop().await;
        if let Some(name) = self.pg_name {
            super::drop_postgres(&name).await;
        }
    }

    /// One step of a folder for these causes.
    pub async fn step_for(&self, smtp: &str, folder: &str, cause: Cause) -> StepReport {
        let mut causes = Causes::default();
        causes.insert(cause);
        self.engine
            .sync_folder(StepRequest {
                mailbox: smtp.into(),
                folder: folder.into(),
                full_resync: false,
                causes,
                ctx: StepContext::new(self.throttle.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("step of {smtp} {folder}: {e}"))
    }

    /// One step for the given causes, its error returned (not a panic).
    pub async fn try_step(
        &self,
        smtp: &str,
        folder: &str,
        cause: Cause,
        full: bool,
    ) -> Result<StepReport, mailsync_actors::SyncError> {
        let mut causes = Causes::default();
        causes.insert(cause);
        self.engine
            .sync_folder(StepRequest {
                mailbox: smtp.into(),
                folder: folder.into(),
                full_resync: full,
                causes,
                ctx: StepContext::new(self.throttle.clone()),
            })
            .await
    }

    /// The simulator's request count of an operation so far.
    pub async fn requests(&self, operation: &str) -> u64 {
        let stats: serde_json::Value = reqwest::get(format!("{}/sim/stats", self.sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests_by_operation"][operation]
            .as_u64()
            .unwrap_or(0)
    }

    /// Posts to the simulator's control API.
    pub async fn sim_post(&self, path: &str, body: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("{}/sim/{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Feeds the CRM changes, then runs steps of `folder` until it has nothing more to do;
    /// returns the items of the steps and what is held after the last.
    pub async fn sync(&self, smtp: &str, folder: &str) -> StepReport {
        self.feed.poll_once().await.unwrap();
        let mut total = StepReport::default();
        for _ in 0..20 {
            let r = self.step_for(smtp, folder, Cause::Notification).await;
            total.items += r.items;
            total.held = r.held;
            total.wake_in = r.wake_in;
            if !r.more {
                return total;
            }
        }
        panic!("{smtp} {folder} kept asking for more steps");
    }

    /// Every item of a folder, read in full with the stamp.
    pub async fn items_in(&self, smtp: &str, folder: FolderRef) -> Vec<Item> {
        let target = ews::Target::impersonating(smtp);
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let op = FindItem {
                folder: folder.clone(),
                shape: Shape::id_only(),
                view: View::IndexedPage { offset, max: 1000 },
                restriction: None,
            };
            let page = self.client.call(&target, &op).await.unwrap().output;
            offset += page.items.len() as u32;
            ids.extend(page.items.iter().filter_map(|i| i.id().cloned()));
            if page.includes_last || page.items.is_empty() {
                break;
            }
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let get = GetItem {
                ids: chunk.to_vec(),
                shape: Shape::all_properties(vec![mailsync::sync::fields::crm_id_path()]),
            };
            for r in self.client.call(&target, &get).await.unwrap().output {
                out.push(r.unwrap());
            }
        }
        out
    }

    /// Every item of a distinguished folder.
    pub async fn items(&self, smtp: &str, folder: DistinguishedFolder) -> Vec<Item> {
        self.items_in(smtp, FolderRef::well_known(folder)).await
    }

    /// The id of a mailbox's shared contacts folder.
    pub async fn shared_folder(&self, smtp: &str) -> FolderRef {
        let find = ews::ops::FindFolder {
            parent: FolderRef::well_known(DistinguishedFolder::Contacts),
            traversal: ews::ops::Traversal::Shallow,
            shape: Shape::all_properties(vec![]),
        };
        let folders = self
            .client
            .call(&ews::Target::impersonating(smtp), &find)
            .await
            .unwrap()
            .output;
        let f = folders
            .into_iter()
            .find(|f| {
                f.display_name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("(CRM)"))
            })
            .expect("the shared contacts folder");
        FolderRef::Id(f.id.unwrap())
    }

    /// The user creates items in a folder; returns their ids.
    pub async fn user_creates(
        &self,
        smtp: &str,
        folder: FolderRef,
        items: Vec<Item>,
    ) -> Vec<ItemId> {
        let op = CreateItem {
            folder: Some(folder),
            items,
            disposition: None,
        };
        self.client
            .call(&ews::Target::impersonating(smtp), &op)
            .await
            .unwrap()
            .output
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    /// The user deletes items (Outlook's "Delete": into Deleted Items, or hard).
    pub async fn user_deletes(&self, smtp: &str, ids: &[ItemId], hard: bool) {
        for chunk in ids.chunks(100) {
            let op = DeleteItem {
                ids: chunk
                    .iter()
                    .map(|i| ItemId {
                        id: i.id.clone(),
                        change_key: None,
                    })
                    .collect(),
                delete_type: if hard {
                    DeleteType::HardDelete
                } else {
                    DeleteType::MoveToDeletedItems
                },
            };
            for r in self
                .client
                .call(&ews::Target::impersonating(smtp), &op)
                .await
                .unwrap()
                .output
            {
                r.unwrap();
            }
        }
    }

    /// Held deletes of a mailbox.
    pub async fn held(&self, smtp: &str) -> Vec<mailsync::db::integrity::Held> {
        self.state.held(smtp, None).await.unwrap()
    }

    /// Decides every held delete of a mailbox.
    pub async fn decide(&self, smtp: &str, d: mailsync::db::integrity::Decision) {
        assert!(
            self.state.decide_held(smtp, None, None, d).await.unwrap() > 0,
            "nothing held"
        );
    }
}
