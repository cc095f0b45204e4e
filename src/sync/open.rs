//! Opening a mailbox: its operator is resolved in the CRM, the folder of each enabled area is
//! found (GetFolder of the distinguished folder; the tenant's shared contacts subfolder is
//! found or created), and their ids are recorded. A folder whose id changed (the mailbox was
//! recreated, or the user deleted and recreated the folder) starts over from no state, and
//! its mappings are compared with what it holds on its next read.

use ews::ops::{CreateFolder, FindFolder, GetFolder, Traversal};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};
use mailsync_actors::{FolderId, MailboxSpec, StepContext, SyncError};

use super::core::{db_error, sync_error, Inner, MailboxSetup};
use super::items::SHARED_CONTACTS;
use crate::config::Area;
use crate::db::state::FolderState;

/// The distinguished folder of an area.
pub fn distinguished(area: Area) -> DistinguishedFolder {
    match area {
        Area::Contacts => DistinguishedFolder::Contacts,
        Area::Calendar => DistinguishedFolder::Calendar,
        Area::Tasks => DistinguishedFolder::Tasks,
        Area::Mail => DistinguishedFolder::Inbox,
    }
}

/// The area a runtime folder syncs.
pub fn area_of(folder: &str) -> Result<Area, SyncError> {
    match folder {
        "contacts" | SHARED_CONTACTS => Ok(Area::Contacts),
        "calendar" => Ok(Area::Calendar),
        "tasks" => Ok(Area::Tasks),
        other => Err(SyncError::Failed(format!(
            "folder {other:?} is not a contacts, calendar or tasks folder"
        ))),
    }
}

impl Inner {
    /// Finds (or creates) the folder of each area, records its id, and lists the runtime
    /// folders of the mailbox.
    pub async fn open(
        &self,
        spec: &MailboxSpec,
        ctx: StepContext,
    ) -> Result<Vec<FolderId>, SyncError> {
        let setup = self.setup(&spec.smtp)?;
        // Folders this process once found free of unrecorded creates may have been written by
        // another owner since (a cluster hands mailboxes around): searched again for stamps.
        self.clean
            .lock()
            .retain(|(mailbox, _, _)| *mailbox != setup.smtp);
        self.resolve_owner(&setup).await?;
        let mut folders = Vec::new();
        for (area, _) in setup.areas.iter().filter(|(a, _)| **a != Area::Mail) {
            let id = self.area_folder(&setup, &ctx, *area).await?;
            self.remember_folder(&setup.smtp, area.as_str(), &id.id)
                .await?;
            folders.push(FolderId::from(area.as_str()));
            if *area == Area::Contacts {
                let shared = self.shared_contacts_folder(&setup, &ctx, &id).await?;
                self.remember_folder(&setup.smtp, SHARED_CONTACTS, &shared.id)
                    .await?;
                // Its own folder actor, so a notification there syncs only that folder.
                folders.push(FolderId::from(SHARED_CONTACTS));
            }
        }
        if setup.areas.contains_key(&Area::Mail) {
            // One actor for the whole mail tree: it follows a tree that grows and shrinks, and
            // sees a move between two folders in one step.
            folders.push(FolderId::from(super::mail::MAIL));
        }
        Ok(folders)
    }

    /// The Exchange folder of an area.
    pub async fn area_folder(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        area: Area,
    ) -> Result<ItemId, SyncError> {
        let op = GetFolder {
            folders: vec![FolderRef::well_known(distinguished(area))],
            shape: Shape::id_only(),
        };
        let found = self.call(setup, ctx, &op).await?;
        let folder = found
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Failed("GetFolder answered nothing".into()))?
            .map_err(sync_error)?;
        folder
            .id
            .ok_or_else(|| SyncError::Failed("GetFolder answered a folder without id".into()))
    }

    /// Records a folder's Exchange id; a different folder than before starts from no state.
    pub async fn remember_folder(
        &self,
        smtp: &str,
        key: &str,
        ews_id: &str,
    ) -> Result<(), SyncError> {
        let current = self.state.folder_state(smtp, key).await.map_err(db_error)?;
        if current.ews_folder_id.as_deref() != Some(ews_id) {
            if current.ews_folder_id.is_some() {
                tracing::warn!(
                    mailbox = smtp,
                    folder = key,
                    "the Exchange folder is a different one than before (recreated?); it is read from scratch and compared"
                );
            }
            let fresh = FolderState {
                ews_folder_id: Some(ews_id.to_owned()),
                sync_state: None,
            };
            self.state
                .set_folder_state(smtp, key, &fresh)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// The tenant's shared contacts subfolder of the contacts folder, created when missing.
    pub async fn shared_contacts_folder(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        parent: &ItemId,
    ) -> Result<ItemId, SyncError> {
        if let Some(id) = self.find_shared_contacts(setup, ctx, parent).await? {
            return Ok(id);
        }
        let create = CreateFolder {
            parent: FolderRef::Id(parent.clone()),
            folders: vec![ews::items::Folder {
                display_name: Some(setup.shared_folder_name.clone()),
                folder_class: Some("IPF.Contact".into()),
                ..ews::items::Folder::default()
            }],
        };
        let created = self.call(setup, ctx, &create).await?;
        created
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Failed("CreateFolder answered nothing".into()))?
            .map_err(sync_error)
    }

    /// The shared contacts subfolder, if it exists (read-only).
    pub async fn find_shared_contacts(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        parent: &ItemId,
    ) -> Result<Option<ItemId>, SyncError> {
        let find = FindFolder {
            parent: FolderRef::Id(parent.clone()),
            traversal: Traversal::Shallow,
            shape: Shape::all_properties(vec![]),
        };
        let children = self.call(setup, ctx, &find).await?;
        Ok(children
            .into_iter()
            .find(|f| f.display_name.as_deref() == Some(setup.shared_folder_name.as_str()))
            .and_then(|f| f.id))
    }
}
