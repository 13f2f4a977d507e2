defmodule Yggdrasil.Broker.Publisher do
  @moduledoc false
  # Publishing of every broker adapter (`publish: :caller`): in the
  # publishing process, with no pooled process in between. The payload goes
  # to the namespace's shared client (a NIF call that only queues it) and the
  # caller waits in a `receive` for the one tagged reply: `:ok` once the
  # broker accepted the message, `{:error, reason}` when it refused it or no
  # connection came up within `publish_timeout` (enforced in Rust). The tag
  # is a reference made here, just before the `receive`: the compiler then
  # has the `receive` skip what the mailbox held before, so a publisher with
  # a backlog of other messages does not scan it on every publish.
  #
  # A broker's publisher module is `use Yggdrasil.Broker.Publisher,
  # broker: <its name>`.

  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker
  alias Yggdrasil.Broker.Client
  alias Yggdrasil.Channel

  # The Rust side answers within publish_timeout; this margin only covers
  # the reply's send on a loaded machine. A reply later than that would
  # be left in the caller's mailbox, which the Rust deadline rules out.
  @reply_margin_ms 1_000

  defmacro __using__(broker: broker) do
    quote do
      # Pooled workers only serve direct calls of
      # `Yggdrasil.Publisher.Adapter.publish/4`; `Yggdrasil.publish/3` uses
      # `publish_in_caller/4`.
      use Yggdrasil.Publisher.Adapter, worker: :stateless

      @impl Yggdrasil.Publisher.Adapter
      def publish(_worker, %Yggdrasil.Channel{} = channel, message, options) do
        with {:ok, channel, route} <- Yggdrasil.Registry.resolve(channel),
             do: publish_in_caller(channel, route, message, options)
      end

      @impl Yggdrasil.Publisher.Adapter
      def publish_in_caller(channel, route, message, options),
        do: Yggdrasil.Broker.Publisher.publish(unquote(broker), channel, route, message, options)
    end
  end

  @doc false
  def publish(broker, %Channel{} = channel, route, message, options) do
    with {:ok, payload} <- encode(broker, channel, route, message),
         {:ok, %{client: client, publish_timeout: timeout}} <-
           Broker.client(broker, channel.namespace),
         tag = make_ref(),
         :ok <- Client.publish(client, channel.name, payload, properties(options), tag) do
      receive do
        {Client.tag(), :published, ^tag, result} -> result
      after
        timeout + @reply_margin_ms ->
          {:error, "#{inspect(broker)}: no answer to a publish within #{timeout} ms"}
      end
    end
  end

  # Broker payloads are bytes: the transformer must give a binary.
  defp encode(broker, channel, route, message) do
    case route.transformer_module.encode(channel, message) do
      {:ok, payload} when is_binary(payload) ->
        {:ok, payload}

      {:ok, other} ->
        {:error,
         "#{inspect(broker)} publishes binaries: the #{inspect(route.transformer)} transformer " <>
           "gave #{inspect(other, limit: 10, printable_limit: 100)}; publish a binary, " <>
           "or use :json or a transformer that encodes to a binary"}

      {:error, _} = error ->
        error
    end
  end

  # `publish/3` options other than `metadata:` are message properties
  # (the broker's message properties; its schema in Rust checks them).
  defp properties(options), do: options |> Keyword.delete(:metadata) |> Map.new()
end
