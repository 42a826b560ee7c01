//! `amqp-bind`: the bench's RabbitMQ setup (a durable topic exchange and a queue bound with `#`),
//! also how `ceiling-rabbitmq` makes its publishes routable.

pub async fn amqp_bind(url: &str, exchange: &str, queue: &str, delete: bool) -> anyhow::Result<()> {
    use lapin::options::{
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if delete {
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    } else {
        ch.exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}
