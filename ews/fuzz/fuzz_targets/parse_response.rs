//! Fuzzes the response readers: any bytes give a value or an error, never a panic.
#![no_main]

use ews::ops::*;
use ews::types::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = ews::soap::parse_response(data) {
        let b = &resp.body;
        let f = || FolderRef::well_known(DistinguishedFolder::Inbox);
        let _ = GetItem { ids: vec![], shape: Shape::id_only() }.parse(b);
        let _ = SyncFolderItems { folder: f(), shape: Shape::id_only(), sync_state: None, ignore: vec![], max_changes: 1 }.parse(b);
        let _ = SyncFolderHierarchy { folder: None, shape: Shape::id_only(), sync_state: None }.parse(b);
        let _ = FindItem { folder: f(), shape: Shape::id_only(), view: View::IndexedPage { offset: 0, max: 1 }, restriction: None }.parse(b);
        let _ = CreateItem { folder: None, items: vec![], disposition: None }.parse(b);
        let _ = UpdateItem { changes: vec![], conflict: ConflictResolution::AutoResolve, disposition: None, calendar: false }.parse(b);
        let _ = GetFolder { folders: vec![], shape: Shape::id_only() }.parse(b);
        let _ = Subscribe { folders: vec![], event_types: vec![] }.parse(b);
    }
});
