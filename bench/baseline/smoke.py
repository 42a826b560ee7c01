"""Smoke test for the baseline receiver: one signed request (expect 200), one tampered
request (expect 401). With --check-rabbit, binds a temporary queue to the exchange first and
checks that the accepted event arrived, then deletes the queue. With --check-kafka, notes the
topic's end offsets first and reads the accepted event back from them afterwards.

Run with the venv's interpreter while run.sh is serving:
    .venv/bin/python smoke.py [--url http://127.0.0.1:8090/hooks/cobo] [--check-rabbit]
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

from nacl.signing import SigningKey

SEED_HEX = "0281d349927d3b4342129aa4d86bd0ed70163feb7b8d06fecc25c667974b6297"


def sign(body: bytes, ts: str) -> str:
    digest = hashlib.sha256(hashlib.sha256(body + b"|" + ts.encode()).digest()).digest()
    return SigningKey(bytes.fromhex(SEED_HEX)).sign(digest).signature.hex()


def post(url: str, body: bytes, ts: str, sig: str):
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Biz-Timestamp": ts,
            "Biz-Resp-Signature": sig,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class KafkaCheck:
    def __init__(self):
        from confluent_kafka import Consumer, TopicPartition

        self.TopicPartition = TopicPartition
        self.topic = os.environ.get("TOPIC", "hookbridge-bench.cobo")
        self.consumer = Consumer(
            {
                "bootstrap.servers": os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092"),
                "group.id": f"baseline-smoke-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        meta = self.consumer.list_topics(self.topic, timeout=10)
        self.start = {}
        for p in meta.topics[self.topic].partitions:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=10
            )
            self.start[p] = high

    def read_after(self, event_id: str) -> bool:
        self.consumer.assign(
            [self.TopicPartition(self.topic, p, off) for p, off in self.start.items()]
        )
        seen = []
        deadline = time.time() + 10
        try:
            while time.time() < deadline:
                msg = self.consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                env = json.loads(msg.value())
                seen.append(env["id"])
                if msg.key() == event_id.encode() and env["id"] == event_id:
                    print(
                        f"kafka:    topic={msg.topic()} partition={msg.partition()} "
                        f"offset={msg.offset()} key={msg.key().decode()} type={env['type']}"
                    )
                    return True
            print(f"kafka:    event not found (saw {seen})")
            return False
        finally:
            self.consumer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8090/hooks/cobo")
    ap.add_argument("--check-rabbit", action="store_true")
    ap.add_argument("--check-kafka", action="store_true")
    args = ap.parse_args()

    event_id = f"smoke-{uuid.uuid4()}"
    body = json.dumps(
        {"event_id": event_id, "type": "wallets.transaction.succeeded", "data": {"amount": "1"}}
    ).encode()
    ts = str(int(time.time() * 1000))
    sig = sign(body, ts)

    queue = conn = None
    if args.check_rabbit:
        import aio_pika

        conn = await aio_pika.connect_robust(
            os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        )
        ch = await conn.channel()
        ex = await ch.declare_exchange(
            os.environ.get("EXCHANGE", "hookbridge-bench"), aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await ch.declare_queue(f"baseline-smoke-{uuid.uuid4().hex[:8]}", auto_delete=False)
        await queue.bind(ex, routing_key="cobo.#")

    kafka = None
    if args.check_kafka:
        kafka = KafkaCheck()

    ok = True
    status, text = await asyncio.to_thread(post, args.url, body, ts, sig)
    print(f"signed:   {status} {text}")
    ok &= status == 200 and json.loads(text) == {"status": "accepted"}

    tampered = body.replace(b'"1"', b'"1000"')
    status, text = await asyncio.to_thread(post, args.url, tampered, ts, sig)
    print(f"tampered: {status} {text}")
    ok &= status == 401

    if queue is not None:
        try:
            msg = None
            for _ in range(50):
                msg = await queue.get(no_ack=True, fail=False)
                if msg:
                    break
                await asyncio.sleep(0.1)
            if msg is None:
                print("rabbit:   no message arrived")
                ok = False
            else:
                env = json.loads(msg.body)
                print(
                    f"rabbit:   routing_key={msg.routing_key} message_id={msg.message_id} "
                    f"persistent={msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT} "
                    f"id={env['id']} type={env['type']} source={env['source']}"
                )
                ok &= msg.message_id == event_id and env["id"] == event_id
                ok &= env["data"]["event_id"] == event_id
                extra = await queue.get(no_ack=True, fail=False)
                if extra is not None:
                    print("rabbit:   unexpected second message (tampered request published?)")
                    ok = False
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await conn.close()

    if kafka is not None:
        found = await asyncio.to_thread(kafka.read_after, event_id)
        ok &= found

    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
