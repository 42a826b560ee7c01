"""Docs-style baseline webhook receiver for the hookbridge benchmarks.

A straightforward receiver written the way provider and client-library docs suggest:
FastAPI + uvicorn (one worker), PyNaCl for Cobo WaaS 2.0 Ed25519 verification, and
either aio-pika (RabbitMQ, publisher confirms) or confluent-kafka (idempotent producer,
acks=all, Confluent's asyncio pattern) as the sink. The webhook is answered 200 only after
the broker has confirmed the event.

Environment:
  SINK            rabbitmq | kafka (default rabbitmq)
  COBO_PUBKEY     Ed25519 public key, hex
  AMQP_URL        default amqp://guest:guest@127.0.0.1:5672/%2f
  EXCHANGE        default hookbridge-bench (durable topic exchange, routing key cobo.<type>)
  KAFKA_BROKERS   default 127.0.0.1:9092
  TOPIC           default hookbridge-bench.cobo
  KAFKA_LINGER_MS optional; unset keeps librdkafka's default
"""

import asyncio
import hashlib
import json
import os
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

SINK = os.environ.get("SINK", "rabbitmq")
COBO_PUBKEY = os.environ.get(
    "COBO_PUBKEY", "f06a7074b7892a39139b6317509f9d0e01ae234cf17fc7bfa9db3d5957f931be"
)
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
EXCHANGE = os.environ.get("EXCHANGE", "hookbridge-bench")
KAFKA_BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
TOPIC = os.environ.get("TOPIC", "hookbridge-bench.cobo")
SOURCE = "/hooks/cobo"

verify_key = VerifyKey(bytes.fromhex(COBO_PUBKEY))


# --------------------------------------------------------------------------- sinks


class RabbitSink:
    """aio-pika: robust connection, confirm channel, durable topic exchange."""

    async def start(self):
        import aio_pika

        self._aio_pika = aio_pika
        self.connection = await aio_pika.connect_robust(AMQP_URL)
        # on_return_raises: an unroutable (returned) mandatory message is a failure, like a Nack.
        self.channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.exchange = await self.channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def publish(self, event_id: str, event_type: str, body: bytes):
        message = self._aio_pika.Message(
            body=body,
            content_type="application/cloudevents+json",
            message_id=event_id,
            delivery_mode=self._aio_pika.DeliveryMode.PERSISTENT,
        )
        # With publisher confirms this awaits the broker's Basic.Ack (raises on Nack/Return).
        await self.exchange.publish(message, routing_key=f"cobo.{event_type}")

    async def stop(self):
        await self.connection.close()


class KafkaSink:
    """confluent-kafka, following Confluent's asyncio example (AIOProducer).

    A background thread polls the producer; each delivery callback resolves an asyncio
    Future on the event loop through call_soon_threadsafe.
    """

    async def start(self):
        from confluent_kafka import KafkaException, Producer

        self._KafkaException = KafkaException
        conf = {
            "bootstrap.servers": KAFKA_BROKERS,
            "enable.idempotence": True,
            "acks": "all",
        }
        if os.environ.get("KAFKA_LINGER_MS"):
            conf["linger.ms"] = int(os.environ["KAFKA_LINGER_MS"])
        self.loop = asyncio.get_running_loop()
        self.producer = Producer(conf)
        self._cancelled = False
        self._poll_thread = threading.Thread(target=self._poll_loop, daemon=True)
        self._poll_thread.start()

    def _poll_loop(self):
        while not self._cancelled:
            self.producer.poll(0.1)

    async def publish(self, event_id: str, event_type: str, body: bytes):
        result = self.loop.create_future()

        def _resolve(err, msg):
            if result.done():  # request was cancelled (client went away)
                return
            if err is not None:
                result.set_exception(self._KafkaException(err))
            else:
                result.set_result(msg)

        def ack(err, msg):  # runs on the poll thread
            self.loop.call_soon_threadsafe(_resolve, err, msg)

        self.producer.produce(TOPIC, value=body, key=event_id, on_delivery=ack)
        await result

    async def stop(self):
        self._cancelled = True
        self._poll_thread.join()
        self.producer.flush(5)


sink = {"rabbitmq": RabbitSink, "kafka": KafkaSink}[SINK]()


@asynccontextmanager
async def lifespan(_app):
    await sink.start()
    yield
    await sink.stop()


app = FastAPI(lifespan=lifespan)


# --------------------------------------------------------------------------- handler


def verify_cobo(body: bytes, timestamp: str, signature_hex: str) -> bool:
    """Cobo WaaS 2.0: Ed25519 over sha256(sha256(body + b"|" + timestamp))."""
    message = body + b"|" + timestamp.encode()
    digest = hashlib.sha256(hashlib.sha256(message).digest()).digest()
    try:
        verify_key.verify(digest, bytes.fromhex(signature_hex))
        return True
    except (BadSignatureError, ValueError):
        return False


@app.post("/hooks/cobo")
async def cobo_webhook(request: Request):
    body = await request.body()
    timestamp = request.headers.get("Biz-Timestamp")
    signature = request.headers.get("Biz-Resp-Signature")
    if not timestamp or not signature or not verify_cobo(body, timestamp, signature):
        return JSONResponse({"error": "invalid signature"}, status_code=401)

    try:
        payload = json.loads(body)
        event_id = str(payload["event_id"])
        event_type = str(payload.get("type", "unknown"))
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "invalid payload"}, status_code=400)

    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "datacontenttype": "application/json",
        "data": payload,
    }
    try:
        await sink.publish(event_id, event_type, json.dumps(envelope).encode())
    except Exception as exc:  # broker nack/return, timeout, queue full, connection lost
        return JSONResponse({"error": f"publish failed: {exc}"}, status_code=503)

    return {"status": "accepted"}
