//! Whatever bytes arrive, the response readers return a value or an error: never a panic.

use std::path::Path;

use ews::ops::*;
use ews::soap::parse_response;
use ews::streaming::StreamParser;
use ews::types::*;
use proptest::prelude::*;

/// Runs every reader over `doc`; returns normally unless a reader panics.
fn read_everything(doc: &[u8]) {
    let _ = ews::xml::parse(doc);
    if let Ok(resp) = parse_response(doc) {
        let b = &resp.body;
        let f = || FolderRef::well_known(DistinguishedFolder::Inbox);
        let _ = GetItem {
            ids: vec![],
            shape: Shape::id_only(),
        }
        .parse(b);
        let _ = SyncFolderItems {
            folder: f(),
            shape: Shape::id_only(),
            sync_state: None,
            ignore: vec![],
            max_changes: 1,
        }
        .parse(b);
        let _ = SyncFolderHierarchy {
            folder: None,
            shape: Shape::id_only(),
            sync_state: None,
        }
        .parse(b);
        let _ = FindItem {
            folder: f(),
            shape: Shape::id_only(),
            view: View::IndexedPage { offset: 0, max: 1 },
            restriction: None,
        }
        .parse(b);
        let _ = CreateItem {
            folder: None,
            items: vec![],
            disposition: Some(MessageDisposition::SendOnly),
        }
        .parse(b);
        let _ = UpdateItem {
            changes: vec![],
            conflict: ConflictResolution::AutoResolve,
            disposition: None,
            calendar: false,
        }
        .parse(b);
        let _ = DeleteItem {
            ids: vec![],
            delete_type: DeleteType::HardDelete,
        }
        .parse(b);
        let _ = MoveItem {
            ids: vec![],
            to: f(),
        }
        .parse(b);
        let _ = GetFolder {
            folders: vec![],
            shape: Shape::id_only(),
        }
        .parse(b);
        let _ = FindFolder {
            parent: f(),
            traversal: Traversal::Deep,
            shape: Shape::id_only(),
        }
        .parse(b);
        let _ = CreateFolder {
            parent: f(),
            folders: vec![],
        }
        .parse(b);
        let _ = Subscribe {
            folders: vec![],
            event_types: vec![],
        }
        .parse(b);
    }
    let mut p = StreamParser::new();
    let _ = p.push(doc);
    let _ = p.push(doc);
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(doc in proptest::collection::vec(any::<u8>(), 0..2048)) {
        read_everything(&doc);
    }

    #[test]
    fn arbitrary_text_never_panics(doc in "[<>/a-zA-Z:=\" &;#x0-9\\]\\[!?-]{0,512}") {
        read_everything(doc.as_bytes());
    }

    #[test]
    fn mutated_real_responses_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = fixtures();
        let mut doc = all[which.index(all.len())].clone();
        for (at, byte) in edits {
            let i = at.index(doc.len());
            doc[i] = byte;
        }
        let end = cut.index(doc.len() + 1);
        read_everything(&doc[..end]);
        read_everything(&doc);
    }
}
