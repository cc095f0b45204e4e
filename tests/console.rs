//! The admin console in a real headless Chromium over WebDriver (tests/webdriver), against a
//! real admin server with fake ports (tests/admin_rig).

mod admin_rig;
mod webdriver;
use admin_rig::*;

use mailsync_actors::fakes::FakeSync;
use mailsync_actors::*;
use serde_json::Value;

/// The web console in a real headless Chromium: log in, page through 120 mailboxes, filter,
/// pause one and see it paused, read a conflict with both sides' values, retry a failure,
/// approve held deletes, and log out.
#[actix_rt::test]
async fn the_console_in_a_real_browser() {
    let Some((chromium, chromedriver)) = webdriver::binaries() else {
        mailsync_testkit::require::missing(
            "chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_logs(&dir).await;
    let gate = FakeGate::holding(vec![held_group(
        "user2@example.com",
        "contacts",
        "shared",
        30,
    )]);
    let rig = Rig::start_with(
        Some(TOKEN),
        FakeSync::new(&["contacts", "contacts/shared", "tasks"]),
        120,
        Some(store.clone()),
        Some(gate.clone()),
    )
    .await;
    rig.ready().await;
    let b = webdriver::Browser::start(&chromium, &chromedriver).await;

    // Log in: the token is typed once.
    b.goto(&format!("{}/", rig.base)).await;
    b.wait_for(
        "the login form",
        "return !document.getElementById('login').hidden",
    )
    .await;
    b.type_into("#token", "a-wrong-token-of-some-length").await;
    b.click("#login-button").await;
    b.wait_for(
        "a refused token is said so",
        "return document.getElementById('login-error').textContent === 'wrong bearer token'",
    )
    .await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-button").await;
    b.wait_for(
        "the first page of mailboxes",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 50",
    )
    .await;
    assert!(b
        .text("#summary")
        .await
        .starts_with("120 of 120 mailboxes match"));
    assert_eq!(b.text(".pager .page").await, "page 1 of 3");
    let stored = b
        .run("return sessionStorage.getItem('mailsync.token')")
        .await;
    assert_eq!(stored, Value::from(TOKEN));
    let cookies = b.run("return document.cookie").await;
    assert_eq!(cookies, Value::from(""), "no cookie");

    // Paging, then a filter.
    b.click(".pager a[rel=next]").await;
    b.wait_for(
        "page 2",
        "return document.querySelector('.pager .page').textContent === 'page 2 of 3'",
    )
    .await;
    b.type_into("input[name=q]", "user7").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_for(
        "the filtered list",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 11",
    )
    .await;
    assert!(b
        .run("return location.hash")
        .await
        .as_str()
        .unwrap()
        .contains("q=user7"));
    let held_row = b
        .run("return document.querySelector('tr[data-mailbox=\"user2@example.com\"]') === null")
        .await;
    assert_eq!(held_row, Value::Bool(true));

    // An action and its effect.
    b.click("tr[data-mailbox=\"user7@example.com\"] button[data-action=pause]")
        .await;
    b.wait_for(
        "user7 shown paused",
        "const r = document.querySelector('tr[data-mailbox=\"user7@example.com\"] td.state'); return r !== null && r.textContent === 'paused'",
    )
    .await;
    assert_eq!(b.text("#flash").await, "user7@example.com: pause ok");
    assert_eq!(
        rig.handle
            .board
            .snapshot("user7@example.com")
            .unwrap()
            .state,
        MailboxState::Paused
    );
    b.click("tr[data-mailbox=\"user7@example.com\"] button[data-action=resume]")
        .await;
    b.wait_for(
        "user7 running again",
        "const r = document.querySelector('tr[data-mailbox=\"user7@example.com\"] td.state'); return r !== null && r.textContent === 'running'",
    )
    .await;

    // The held filter, the mailbox page with its held deletes, approve.
    b.goto(&format!("{}/#/mailboxes?state=held", rig.base))
        .await;
    b.wait_for(
        "only the held mailbox",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 1 && document.querySelector('#mailboxes tbody tr').dataset.mailbox === 'user2@example.com'",
    )
    .await;
    b.click("tr[data-mailbox=\"user2@example.com\"] a.mailbox")
        .await;
    b.wait_for(
        "the held section",
        "return document.getElementById('held') !== null",
    )
    .await;
    let held_text = b.text("#held").await;
    assert!(
        held_text.contains("contacts · shared: 30 deletes in the CRM"),
        "{held_text}"
    );
    assert!(
        held_text.contains("Kunde 1 <b>AG</b>"),
        "escaped, shown as text: {held_text}"
    );
    assert!(
        b.text("#areas").await.contains("held"),
        "the area shows held"
    );
    b.run("window.confirm = function () { return true; }; return true")
        .await;
    b.click("#held .group button[data-post$='/approve']").await;
    b.wait_for(
        "nothing held any more",
        "const h = document.getElementById('held'); return h !== null && h.textContent.includes('Nothing is held')",
    )
    .await;
    assert_eq!(b.text("#flash").await, "user2@example.com: approve ok");
    assert_eq!(gate.decided.lock()[0].2.as_deref(), Some("contacts"));

    // A conflict, read with both sides' values.
    b.click("nav a[href='#/conflicts']").await;
    b.wait_for(
        "the conflict log",
        "return document.querySelectorAll('table.conflicts tbody tr').length === 2",
    )
    .await;
    b.click("table.conflicts tbody tr:first-child a.open").await;
    b.wait_for(
        "the conflict's values",
        "return document.getElementById('values') !== null",
    )
    .await;
    assert_eq!(
        b.text("#values tr[data-field=surname]").await,
        "surname Meier Maier Meier"
    );
    assert!(b.text("#winner").await.starts_with("the CRM"));

    // A parked failure, retried.
    b.click("nav a[href='#/failures']").await;
    b.wait_for(
        "the failures",
        "return document.querySelectorAll('table.failures tbody tr').length === 1",
    )
    .await;
    assert_eq!(b.text("table.failures td.next").await, "when it changes");
    b.click("table.failures button[data-post]").await;
    b.wait_for(
        "the retry is scheduled",
        "const n = document.querySelector('table.failures td.next'); return n !== null && n.textContent !== 'when it changes'",
    )
    .await;
    assert_eq!(
        b.text("#flash").await,
        "user2@example.com: retry: started ok"
    );

    // An error the API answers in JSON (here: a query field the view does not know, named
    // in the error) is shown as text, never parsed as HTML.
    b.goto(&format!(
        "{}/#/conflicts?x%3Cimg%20id%3Dinjected%20src%3Dx%3E=1",
        rig.base
    ))
    .await;
    b.wait_for(
        "the error shown",
        "const p = document.querySelector('#main p.problem'); return p !== null && p.textContent.includes('bad query')",
    )
    .await;
    let shown = b.text("#main p.problem").await;
    assert!(shown.contains("<img id=injected src=x>"), "{shown}");
    assert_eq!(
        b.run("return document.getElementById('injected') === null")
            .await,
        Value::Bool(true),
        "markup from the request was not rendered"
    );

    // A new tab of the same session keeps the token; logging out forgets it.
    b.goto(&format!("{}/#/mailboxes", rig.base)).await;
    b.wait_for(
        "still logged in after a reload",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 50",
    )
    .await;
    if let Ok(dir) = std::env::var("MAILSYNC_CONSOLE_SCREENSHOT") {
        b.screenshot(&std::path::Path::new(&dir).join("console.png"))
            .await;
    }
    b.click("#logout").await;
    b.wait_for(
        "the login form again",
        "return !document.getElementById('login').hidden",
    )
    .await;
    assert_eq!(
        b.run("return sessionStorage.getItem('mailsync.token')")
            .await,
        Value::Null
    );
}
