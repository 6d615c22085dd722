"""Files sent to the Telegram assistant (#21): photos, albums, documents, voice, in private chats
and groups; the getFile limit; a model that cannot see images; a crash between receiving a photo
and answering it.

One real bot process serves the module (each test uses chat ids of its own), against the fake Bot
API (getFile and file downloads over real HTTP) and the fake model server; the files are real
PNG, PDF and WAV bytes.
"""

from __future__ import annotations

import base64
import time

import pytest
from server import FakeServer, chat_reply
from telegram_server import BOT_USER, TOKEN, FakeTelegram, entities_of
from test_attachments_files import pdf, png, wav
from test_telegram import STRANGER, BotProcess, bot_env, final_texts, started

DEFAULT_REPLY = "Hello from the test server."
AT = f"@{BOT_USER['username']}"


@pytest.fixture(scope="module")
def bot(telegram, model, tmp_path_factory):
    home = tmp_path_factory.mktemp("telegram-attachments-home")
    process = started(telegram, BotProcess(bot_env(home, telegram, model, TELEGRAM_RATE_LIMIT="5")))
    yield process
    assert process.stop() == 0, process.stderr
    assert TOKEN not in process.stderr  # the download URLs hold the token: never logged


@pytest.fixture(autouse=True)
def fresh_queue(model):
    model.queue.clear()
    model.blind_models.clear()
    yield
    model.queue.clear()


def photo_sizes(telegram: FakeTelegram, *images: bytes) -> list[dict]:
    """A photo as Telegram sends it: one PhotoSize per size, smallest first."""
    sizes = []
    for image in images:
        width = int.from_bytes(image[16:20], "big")
        height = int.from_bytes(image[20:24], "big")
        sizes.append(telegram.add_file(image, width=width, height=height))
    return sizes


def posts_with(model: FakeServer, needle: str) -> list:
    return [p for p in model.posts if needle in str(p.body.get("messages"))]


def last_user_content(post) -> list | str:
    return post.body["messages"][-1]["content"]


def images_of(post) -> list[bytes]:
    content = last_user_content(post)
    parts = content if isinstance(content, list) else []
    urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    return [base64.b64decode(url.split(",", 1)[1]) for url in urls]


# -- photos ---------------------------------------------------------------------------------


def test_a_photo_is_seen_by_the_model_at_its_largest_size_with_its_caption(bot, telegram, model):
    small, large = png(90, 60, marker=b"small"), png(320, 240, marker=b"large")
    telegram.send_text(101, None, photo=photo_sizes(telegram, small, large), caption="what is this photo?")
    assert final_texts(telegram, 101) == [DEFAULT_REPLY]
    [post] = posts_with(model, "what is this photo?")
    assert images_of(post) == [large]
    assert telegram.calls_to("getFile")
    assert telegram.calls_to("sendChatAction", 101)


def test_a_photo_without_a_caption_is_still_answered(bot, telegram, model):
    image = png(40, 40, marker=b"alone")
    telegram.send_text(102, None, photo=photo_sizes(telegram, image))
    assert final_texts(telegram, 102) == [DEFAULT_REPLY]
    assert any(images_of(p) == [image] for p in model.posts)


def test_an_album_is_one_turn_with_all_its_photos(bot, telegram, model):
    first, second, third = (png(50 + n, 50, marker=b"album%d" % n) for n in range(3))
    for n, image in enumerate((first, second, third)):
        telegram.send_text(
            103,
            None,
            photo=photo_sizes(telegram, image),
            media_group_id="album-1",
            **({"caption": "compare these three"} if n == 0 else {}),
        )
    assert final_texts(telegram, 103) == [DEFAULT_REPLY]
    time.sleep(ALBUM_SETTLE)
    [post] = posts_with(model, "compare these three")
    assert images_of(post) == [first, second, third]
    assert telegram.sent_texts(103) == [DEFAULT_REPLY]  # one answer for the album


ALBUM_SETTLE = 1.5  # longer than the bot waits for an album's next photo


def test_a_model_that_cannot_see_images_gets_one_friendly_line_and_the_chat_goes_on(bot, telegram, model):
    model.blind_models.add("test-model")
    telegram.send_text(104, None, photo=photo_sizes(telegram, png(30, 30)), caption="describe")
    [text] = final_texts(telegram, 104)
    assert "cannot see images" in text
    assert "\n" not in text
    model.blind_models.clear()
    telegram.send_text(104, "and now in words?")
    assert final_texts(telegram, 104, 2)[-1] == DEFAULT_REPLY
    [post] = posts_with(model, "and now in words?")
    assert [m["role"] for m in post.body["messages"]] == ["system", "user"]  # the refused turn was not kept


def test_cancel_while_a_photo_downloads_stops_before_the_model_is_asked(bot, telegram, model):
    telegram.slow("getFile", 3.0)
    try:
        telegram.send_text(114, None, photo=photo_sizes(telegram, png(24, 24)), caption="never asked")
        telegram.wait_for(lambda: telegram.calls_to("sendChatAction", 114))
        telegram.send_text(114, "/cancel")
        [text] = final_texts(telegram, 114, timeout=20)
    finally:
        telegram.slow("getFile", 0)
    assert text == "⏹ Stopped before the reply began."
    assert not posts_with(model, "never asked")


# -- documents ------------------------------------------------------------------------------


def test_a_text_file_and_a_pdf_are_read(bot, telegram, model):
    code = b"def greet():\n    return 'hi from greet.py'\n"
    telegram.send_text(
        105, None, document=telegram.add_file(code, file_name="greet.py", mime_type="text/x-python"), caption="review"
    )
    assert final_texts(telegram, 105) == [DEFAULT_REPLY]
    assert posts_with(model, "hi from greet.py")
    document = pdf(["Quarterly numbers went up"])
    telegram.send_text(105, None, document=telegram.add_file(document, file_name="q3.pdf", mime_type="application/pdf"))
    assert final_texts(telegram, 105, 2)[-1] == DEFAULT_REPLY
    assert posts_with(model, "Quarterly numbers went up")


def test_a_file_of_another_type_gets_a_note_of_what_is_accepted_and_no_model_call(bot, telegram, model):
    archive = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)) * 4
    posts = len(model.posts)
    telegram.send_text(106, None, document=telegram.add_file(archive, file_name="stuff.zip"))
    [text] = final_texts(telegram, 106)
    assert "stuff.zip" in text
    assert "photos" in text
    assert "PDF" in text
    assert len(model.posts) == posts


def test_a_file_over_telegrams_20_mb_limit_is_refused_politely(bot, telegram, model):
    posts = len(model.posts)
    big = telegram.add_file(b"x", file_size=25 * 1024 * 1024, file_name="huge.log")
    telegram.send_text(107, None, document=big)
    [text] = final_texts(telegram, 107)
    assert "20 MB" in text
    # the size the message states is trusted first; a file whose size is only known to getFile too
    hidden = dict(telegram.add_file(b"x", file_size=25 * 1024 * 1024, file_name="huge2.log"))
    del hidden["file_size"]
    telegram.send_text(107, None, document=hidden)
    assert "20 MB" in final_texts(telegram, 107, 2)[-1]
    assert any(c.status == 400 for c in telegram.calls_to("getFile"))
    assert len(model.posts) == posts


# -- voice ----------------------------------------------------------------------------------


def test_a_voice_note_is_transcribed_shown_back_and_answered(bot, telegram, model):
    model.transcript = "remind me to buy milk"
    try:
        telegram.send_text(108, None, voice=telegram.add_file(wav(), duration=1, mime_type="audio/ogg"))
        texts = final_texts(telegram, 108, 2)
    finally:
        model.transcript = "Hello from a voice note."
    assert texts[0] == "🎤 I heard:\n> remind me to buy milk"
    assert texts[1] == DEFAULT_REPLY
    [post] = posts_with(model, "remind me to buy milk")
    assert last_user_content(post) == "remind me to buy milk"
    assert model.transcriptions


def test_audio_that_cannot_be_transcribed_is_one_line(bot, telegram, model):
    model.transcription_status = 401
    try:
        telegram.send_text(109, None, audio=telegram.add_file(wav(), duration=1, file_name="memo.wav"))
        [text] = final_texts(telegram, 109)
    finally:
        model.transcription_status = 200
    assert text.startswith("I couldn't transcribe that voice message")
    assert "\n" not in text


# -- groups ---------------------------------------------------------------------------------


def test_in_groups_only_photos_and_voice_for_the_bot_are_fetched(bot, telegram, model):
    group = -1000701
    downloads = len(telegram.downloads)
    telegram.send_text(group, None, user_id=110, photo=photo_sizes(telegram, png(20, 20)), caption="my cat")
    telegram.send_text(group, None, user_id=110, voice=telegram.add_file(wav(), duration=1))
    time.sleep(1.0)
    assert len(telegram.downloads) == downloads  # not for the bot: never downloaded
    assert not telegram.sent_texts(group)
    telegram.send_text(
        group,
        None,
        user_id=110,
        photo=photo_sizes(telegram, png(21, 21)),
        caption=f"{AT} what breed?",
        caption_entities=entities_of(f"{AT} what breed?"),
    )
    assert final_texts(telegram, group) == [DEFAULT_REPLY]
    [post] = posts_with(model, "what breed?")
    assert "Ada: what breed?" in str(last_user_content(post))
    telegram.send_text(group, None, user_id=110, voice=telegram.add_file(wav(), duration=1), reply_to_bot=True)
    texts = final_texts(telegram, group, 3)
    assert texts[1].startswith("🎤 I heard:")
    assert posts_with(model, "Ada: Hello from a voice note.")


def test_an_album_in_a_group_is_answered_once_when_its_caption_mentions_the_bot(bot, telegram, model):
    group = -1000702
    images = [png(30 + n, 30, marker=b"group-album%d" % n) for n in range(2)]
    caption = f"{AT} which one is sharper?"
    for n, image in enumerate(images):
        fields = {"caption": caption, "caption_entities": entities_of(caption)} if n == 0 else {}
        telegram.send_text(group, None, user_id=110, photo=photo_sizes(telegram, image), media_group_id="g-1", **fields)
    assert final_texts(telegram, group) == [DEFAULT_REPLY]
    time.sleep(ALBUM_SETTLE)
    [post] = posts_with(model, "which one is sharper?")
    assert images_of(post) == images
    assert telegram.sent_texts(group) == [DEFAULT_REPLY]


def test_a_strangers_photo_is_never_downloaded(bot, telegram, model):
    downloads, posts, asked = len(telegram.downloads), len(model.posts), len(telegram.calls_to("getFile"))
    telegram.send_text(STRANGER, None, photo=photo_sizes(telegram, png(23, 23)), caption="look")
    [text] = final_texts(telegram, STRANGER)
    assert str(STRANGER) in text
    assert len(telegram.downloads) == downloads
    assert len(telegram.calls_to("getFile")) == asked
    assert len(model.posts) == posts


def test_the_rate_limit_comes_before_any_download(bot, telegram, model):
    chat = 111
    for n in range(5):
        telegram.send_text(chat, f"text {n}")
    final_texts(telegram, chat, 5, timeout=30)
    downloads = len(telegram.downloads)
    telegram.send_text(chat, None, photo=photo_sizes(telegram, png(22, 22)))
    texts = final_texts(telegram, chat, 6)
    assert "faster than I can answer" in texts[-1]
    assert len(telegram.downloads) == downloads


def test_a_sticker_gets_a_note_of_what_is_read(bot, telegram, model):
    telegram.send_text(
        112,
        None,
        sticker={
            "file_id": "s",
            "file_unique_id": "s",
            "width": 1,
            "height": 1,
            "is_animated": False,
            "is_video": False,
            "type": "regular",
        },
    )
    [text] = final_texts(telegram, 112)
    assert "photos" in text
    assert "voice" in text


# -- a crash between receiving and answering --------------------------------------------------


def test_a_photo_received_before_a_crash_is_answered_after_the_restart(tmp_path):
    telegram, model = FakeTelegram(), FakeServer()
    try:
        env = bot_env(tmp_path / "home", telegram, model)
        process = started(telegram, BotProcess(env))
        model.push(chat_reply("slow " * 40, size=4, delay=0.2))  # the crash lands mid-reply
        image = png(60, 40, marker=b"replayed")
        telegram.send_text(113, None, photo=photo_sizes(telegram, image), caption="after the crash?")
        telegram.wait_for(lambda: posts_with(model, "after the crash?"))
        process.process.kill()
        process.process.wait(10)
        process = started(telegram, BotProcess(env))
        telegram.wait_for(lambda: DEFAULT_REPLY in telegram.sent_texts(113), timeout=20)
        posts = posts_with(model, "after the crash?")
        assert len(posts) == 2
        assert images_of(posts[-1]) == [image]  # downloaded again
        assert [m["role"] for m in posts[-1].body["messages"]] == ["system", "user"]
        assert process.stop() == 0
    finally:
        telegram.close()
        model.close()
