defmodule Yggdrasil.Application do
  @moduledoc false
  use Application

  @impl Application
  def start(_type, _args) do
    case Yggdrasil.Engine.load_error() do
      nil ->
        :ok = Yggdrasil.Subscriber.Generator.new_table()
        start_tree()

      message ->
        {:error, message}
    end
  end

  defp start_tree do
    children = [
      Yggdrasil.Registry,
      {DynamicSupervisor, name: Yggdrasil.Subscriber.Adapters, strategy: :one_for_one},
      Yggdrasil.Subscriber.Generator,
      {Registry, keys: :unique, name: Yggdrasil.Publisher.Names},
      {DynamicSupervisor, name: Yggdrasil.Publisher.Pools, strategy: :one_for_one},
      # Multi-node `:elixir` delivery; uses the `:pg` scope of the Registry.
      Yggdrasil.Relay,
      # Send wide broker fan-outs from the schedulers.
      Yggdrasil.Broker.Sender,
      # Paces the broker delivery thread to the subscribers.
      Yggdrasil.Broker.Pacer,
      # Broker clients; last, so that its restart restarts nothing else
      # (subscriber processes watch their client's owner themselves).
      Yggdrasil.Broker
    ]

    with {:ok, supervisor} <-
           Supervisor.start_link(children, strategy: :rest_for_one, name: Yggdrasil.Supervisor),
         :ok <- register_builtins() do
      {:ok, supervisor}
    end
  end

  # The engine's table outlives the application, its adapters do not: their
  # channels' subscribers learn it, and the next start gives them new
  # adapters (see Yggdrasil.Subscriber.Generator).
  @impl Application
  def stop(_state), do: Yggdrasil.Subscriber.Generator.disconnect_all()

  # Improved over Yggdrasil 6: the built-ins are registered before start/2
  # returns, so subscribers started at boot by dependent applications find
  # them.
  defp register_builtins do
    [
      Yggdrasil.Backend.Default,
      Yggdrasil.Transformer.Default,
      Yggdrasil.Transformer.Json,
      Yggdrasil.Adapter.Elixir,
      Yggdrasil.Adapter.Bridge,
      Yggdrasil.Adapter.Redis,
      Yggdrasil.Adapter.Postgres,
      Yggdrasil.Adapter.RabbitMQ
    ]
    |> Enum.reduce_while(:ok, fn module, :ok ->
      case module.register() do
        :ok -> {:cont, :ok}
        {:error, reason} -> {:halt, {:error, {module, reason}}}
      end
    end)
  end
end
