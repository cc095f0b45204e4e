//! Codec benchmarks: reading a 512-change SyncFolderItems response and writing a 100-item
//! CreateItem request. Run: `cargo bench -p ews --bench codec`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ews::items::*;
use ews::ops::*;
use ews::soap::{envelope, parse_response, Headers};
use ews::types::*;

/// A SyncFolderItems response with 512 changes: creates and updates of full calendar items,
/// deletes and read-flag changes, as Exchange sends them with an AllProperties shape.
fn sync_response() -> Vec<u8> {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types"/></s:Header><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>H4sIAAAAAAAEAO29B2AcSZYlJi9tynt/SvvKnl1X1Ve1</m:SyncState><m:IncludesLastItemInRange>false</m:IncludesLastItemInRange><m:Changes>"#,
    );
    for i in 0..512 {
        match i % 4 {
            0 | 1 => {
                let kind = if i % 4 == 0 { "Create" } else { "Update" };
                s.push_str(&format!(
                    r#"<t:{kind}><t:CalendarItem><t:ItemId Id="AAMkADEzOTExYjJkLTYzNmItNDQ1Ni04ZjU4LWY0ZTE2NjA3ZmZlOQBGAAAAAACH{i:06}=" ChangeKey="DwAAABYAAADN{i:06}"/><t:ParentFolderId Id="AAMkADEzOTExYjJkLTYzAC4AAAAAAA==" ChangeKey="AQAAAA=="/><t:ItemClass>IPM.Appointment</t:ItemClass><t:Subject>Termin Nummer {i} mit Kunde &amp; Partner</t:Subject><t:Body BodyType="Text">Agenda: Punkt eins, Punkt zwei, Punkt drei. Bitte Unterlagen mitbringen.</t:Body><t:Categories><t:String>Kunde</t:String></t:Categories><t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="6c7d6b06-4a4b-4c11-9d4b-6d61696c7379" PropertyName="CrmId" PropertyType="String"/><t:Value>appointment:{i}</t:Value></t:ExtendedProperty><t:UID>040000008200E00074C5B7101A82E00800000000{i:06}</t:UID><t:Start>2026-01-05T08:00:00Z</t:Start><t:End>2026-01-05T09:00:00Z</t:End><t:IsAllDayEvent>false</t:IsAllDayEvent><t:LegacyFreeBusyStatus>Busy</t:LegacyFreeBusyStatus><t:Location>Raum {i}</t:Location><t:CalendarItemType>Single</t:CalendarItemType></t:CalendarItem></t:{kind}>"#
                ));
            }
            2 => s.push_str(&format!(r#"<t:Delete><t:ItemId Id="AAMkDel{i:06}=" ChangeKey="DwAAAB{i:06}"/></t:Delete>"#)),
            _ => s.push_str(&format!(r#"<t:ReadFlagChange><t:ItemId Id="AAMkRead{i:06}=" ChangeKey="DwAAAB{i:06}"/><t:IsRead>true</t:IsRead></t:ReadFlagChange>"#)),
        }
    }
    s.push_str("</m:Changes></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>");
    s.into_bytes()
}

fn contact(i: usize) -> Item {
    Item::Contact(Contact {
        given_name: Some(format!("Vorname{i}")),
        surname: Some(format!("Nachname{i}")),
        company_name: Some("Muster GmbH".into()),
        job_title: Some("Einkauf".into()),
        email: [Some(format!("kontakt{i}@example.com")), None, None],
        phones: [Some("+49 30 123456".into()), None, None],
        addresses: [
            PhysicalAddress {
                street: Some("Hauptstr. 1".into()),
                city: Some("Berlin".into()),
                postal_code: Some("10115".into()),
                ..Default::default()
            },
            PhysicalAddress::default(),
            PhysicalAddress::default(),
        ],
        categories: vec!["Kunde".into()],
        extended: vec![ExtendedProperty {
            uri: ExtendedFieldUri::string("6c7d6b06-4a4b-4c11-9d4b-6d61696c7379", "CrmId"),
            value: format!("contact:{i}"),
        }],
        ..Default::default()
    })
}

fn bench(c: &mut Criterion) {
    let doc = sync_response();
    let op = SyncFolderItems {
        folder: FolderRef::well_known(DistinguishedFolder::Calendar),
        shape: Shape::id_only(),
        sync_state: None,
        ignore: vec![],
        max_changes: 512,
    };
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("parse SyncFolderItems 512 changes", |b| {
        b.iter(|| {
            let resp = parse_response(&doc).unwrap();
            let out = op.parse(&resp.body).unwrap();
            assert_eq!(out.changes.len(), 512);
            out
        })
    });
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: (0..100).map(contact).collect(),
        disposition: None,
    };
    let headers = Headers {
        version: "Exchange2013_SP1",
        impersonate: Some("user1@example.com"),
        delegate: None,
        time_zone: Some("UTC"),
    };
    let size = envelope(&headers, |w| create.write_body(w)).len();
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("write CreateItem 100 contacts", |b| {
        b.iter(|| envelope(&headers, |w| create.write_body(w)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
