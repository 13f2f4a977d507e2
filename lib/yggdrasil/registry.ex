defmodule Yggdrasil.Registry do
  @moduledoc """
  Aliases for transformers, backends and adapters.

  Every registered module can be found by its alias and by its own name.
  Lookups read `:persistent_term`, so they cost no copy and no message on the
  publish path. Adapters are also announced in a `:pg` group so other nodes
  can find where an adapter runs (`get_adapter_node/1`).

      iex> Yggdrasil.Registry.get_transformer_module(:json)
      {:ok, Yggdrasil.Transformer.Json}
      iex> Yggdrasil.Registry.get_backend_module(Yggdrasil.Backend.Default)
      {:ok, Yggdrasil.Backend.Default}
      iex> Yggdrasil.Registry.get_adapter_module(:nope)
      {:error, "Yggdrasil adapter: nope not loaded"}
  """
  use Supervisor

  alias Yggdrasil.Channel
  alias Yggdrasil.Route

  # Every cached route, in one map keyed by the channel's `{adapter,
  # transformer, backend}`, under an atom: a `:persistent_term` read hashes
  # its key on every publish, and an atom is the cheapest key to hash (a
  # tuple key per route cost a sizeable part of a publish; figures in
  # docs/performance.md). Adding a route replaces the map, and replacing a
  # `:persistent_term` makes every process check for references to the old
  # one: fine once per route.
  @routes :"Yggdrasil.Registry.routes"

  @typedoc "An alias or a module."
  @type name :: atom()

  @type type :: :transformer | :backend | :subscriber | :publisher | :adapter

  @doc false
  def start_link(_) do
    Supervisor.start_link(__MODULE__, nil, name: Yggdrasil.Registry.Supervisor)
  end

  @impl Supervisor
  def init(_) do
    children = [%{id: :pg, start: {:pg, :start_link, [__MODULE__]}}]
    Supervisor.init(children, strategy: :one_for_one)
  end

  @doc """
  Registers a transformer `module` under `name`; `{:error, reason}` when
  `module` does not export `encode/2` and `decode/2`.
  """
  @spec register_transformer(name(), module()) :: :ok | {:error, binary()}
  def register_transformer(name, module) do
    with :ok <- implements(module, :transformer, encode: 2, decode: 2),
         do: register(:transformer, name, module)
  end

  @doc """
  Registers a backend `module` under `name`; `{:error, reason}` when
  `module` does not export the `Yggdrasil.Backend` callbacks.
  """
  @spec register_backend(name(), module()) :: :ok | {:error, binary()}
  def register_backend(name, module) do
    callbacks = [subscribe: 1, unsubscribe: 1, connected: 2, disconnected: 2, publish: 3]
    with :ok <- implements(module, :backend, callbacks), do: register(:backend, name, module)
  end

  @doc """
  Registers an adapter `module` under `name`, together with its subscriber
  and publisher modules.
  """
  @spec register_adapter(name(), module()) :: :ok | {:error, term()}
  def register_adapter(name, module) when is_atom(name) and is_atom(module) do
    with {:ok, subscriber} <- adapter_call(module, :get_subscriber_module),
         {:ok, publisher} <- adapter_call(module, :get_publisher_module),
         {:ok, capabilities} <- capabilities(module, publisher),
         :ok <- put_capabilities(name, module, capabilities),
         :ok <- register(:subscriber, name, subscriber),
         :ok <- register(:subscriber, module, subscriber),
         :ok <- register(:publisher, name, publisher),
         :ok <- register(:publisher, module, publisher),
         :ok <- register(:adapter, name, module) do
      announce(name)
      announce(module)
    end
  end

  def register_adapter(name, module), do: bad_alias(name, module)

  @doc """
  How the events of the adapter `name` (alias or module) reach subscribers:
  `:engine` or `:process` (see `Yggdrasil.Adapter`); `:process` for an
  adapter that is not registered here.

      iex> Yggdrasil.Registry.get_delivery(:elixir)
      :engine
  """
  @spec get_delivery(name()) :: Yggdrasil.Route.delivery()
  def get_delivery(name) do
    case :persistent_term.get({__MODULE__, :capabilities, name}, nil) do
      %{delivery: delivery} -> delivery
      nil -> :process
    end
  end

  @doc "Gets the transformer module for an alias or module."
  @spec get_transformer_module(name()) :: {:ok, module()} | {:error, binary()}
  def get_transformer_module(name), do: get_module(:transformer, name)

  @doc "Gets the backend module for an alias or module."
  @spec get_backend_module(name()) :: {:ok, module()} | {:error, binary()}
  def get_backend_module(name), do: get_module(:backend, name)

  @doc "Gets the subscriber adapter module for an adapter alias or module."
  @spec get_subscriber_module(name()) :: {:ok, module()} | {:error, binary()}
  def get_subscriber_module(name), do: get_module(:subscriber, name)

  @doc "Gets the publisher adapter module for an adapter alias or module."
  @spec get_publisher_module(name()) :: {:ok, module()} | {:error, binary()}
  def get_publisher_module(name), do: get_module(:publisher, name)

  @doc "Gets the adapter module for an alias or module."
  @spec get_adapter_module(name()) :: {:ok, module()} | {:error, binary()}
  def get_adapter_module(name), do: get_module(:adapter, name)

  @doc """
  Gets the node where the adapter `name` runs: this node when the adapter is
  registered here, else a connected node that announced it.
  """
  @spec get_adapter_node(name()) :: {:ok, node()} | {:error, binary()}
  def get_adapter_node(name) do
    case get_adapter_module(name) do
      {:ok, _module} ->
        {:ok, node()}

      {:error, _} = error ->
        case remote_members(name) do
          [pid | _] -> {:ok, node(pid)}
          [] -> error
        end
    end
  end

  @doc """
  Completes a channel: fills `transformer` and `backend` from the adapter's
  defaults and checks all three are registered. A channel whose adapter runs
  only on another node comes back as a `:bridge` channel wrapping it.
  """
  @spec get_full_channel(Channel.t()) :: {:ok, Channel.t()} | {:error, binary()}
  def get_full_channel(%Channel{adapter: adapter} = channel) do
    case resolve(channel) do
      {:ok, channel, _route} ->
        {:ok, channel}

      {:error, _} = error ->
        with {:error, _} <- get_adapter_module(adapter),
             [_ | _] <- remote_members(adapter) do
          bridge_channel(channel)
        else
          _ -> error
        end
    end
  end

  def get_full_channel(other), do: Channel.not_a_channel(other)

  defp bridge_channel(%Channel{} = remote) do
    # The wrapped channel is the bridge's identity: no metadata in it.
    bridge = %Channel{name: %Channel{remote | metadata: nil}, adapter: :bridge}

    with {:ok, channel, _route} <- resolve(bridge), do: {:ok, channel}
  end

  @doc false
  # The full channel and the modules that serve it: `{:ok, channel, route}`
  # for a channel whose adapter is registered on this node. Routes are
  # built once per (adapter, transformer, backend) and cached, so a publish
  # pays one lookup instead of one per module it needs. Routes are built,
  # and erased by every registration, under one lock, so a cached route
  # never outlives what it was built from.
  @spec resolve(Channel.t()) :: {:ok, Channel.t(), Route.t()} | {:error, binary()}
  def resolve(%Channel{adapter: adapter, transformer: transformer, backend: backend} = channel) do
    case :persistent_term.get(@routes, %{}) do
      # A channel that names its transformer and backend is already full.
      %{{^adapter, ^transformer, ^backend} => route} when transformer != nil and backend != nil ->
        {:ok, channel, route}

      %{{^adapter, ^transformer, ^backend} => route} ->
        {:ok, with_route(channel, route), route}

      # An adapter that is not registered here (one on another node, for a
      # bridge) is answered without the lock, however often it is asked.
      _ ->
        with {:ok, _} <- get_adapter_module(adapter),
             do: locked(fn -> cached_or_build(channel) end)
    end
  end

  defp cached_or_build(%Channel{adapter: a, transformer: t, backend: b} = channel) do
    routes = :persistent_term.get(@routes, %{})

    case routes do
      %{{^a, ^t, ^b} => route} -> {:ok, with_route(channel, route), route}
      _ -> build_route(channel, routes)
    end
  end

  defp build_route(%Channel{adapter: adapter} = channel, routes) do
    with {:ok, adapter_module} <- get_adapter_module(adapter),
         transformer = channel.transformer || adapter_module.get_transformer(),
         backend = channel.backend || adapter_module.get_backend(),
         {:ok, transformer_module} <- get_transformer_module(transformer),
         {:ok, backend_module} <- get_backend_module(backend) do
      capabilities = :persistent_term.get({__MODULE__, :capabilities, adapter}, %{})

      route = %Route{
        transformer: transformer,
        backend: backend,
        transformer_module: transformer_module,
        backend_module: backend_module,
        publisher_module: lookup(:publisher, adapter),
        subscriber_module: lookup(:subscriber, adapter),
        delivery: Map.get(capabilities, :delivery, :process),
        publish: Map.get(capabilities, :publish, :pool)
      }

      route = Route.complete(route)
      key = {adapter, channel.transformer, channel.backend}
      :persistent_term.put(@routes, Map.put(routes, key, route))
      {:ok, with_route(channel, route), route}
    end
  end

  # Registrations and route builds, one at a time on this node (rare:
  # once per registration, once per route after it).
  defp locked(fun), do: :global.trans({{__MODULE__, :routes}, self()}, fun, [node()])

  defp with_route(%Channel{transformer: t, backend: b} = channel, %{transformer: t, backend: b}),
    do: channel

  defp with_route(channel, %{transformer: transformer, backend: backend}),
    do: %Channel{channel | transformer: transformer, backend: backend}

  defp lookup(type, name), do: :persistent_term.get({__MODULE__, type, name}, nil)

  defp register(type, name, module) when is_atom(name) and is_atom(module) do
    locked(fn ->
      :persistent_term.put({__MODULE__, type, name}, module)
      :persistent_term.put({__MODULE__, type, module}, module)
      erase_routes()
    end)
  end

  defp register(_type, name, module), do: bad_alias(name, module)

  # A module that cannot serve as `kind` is refused when it is registered,
  # not by the first publish or subscribe that uses it.
  defp implements(module, kind, callbacks) when is_atom(module) do
    loaded? = Code.ensure_loaded?(module)

    case Enum.reject(callbacks, fn {f, arity} ->
           loaded? and function_exported?(module, f, arity)
         end) do
      [] ->
        :ok

      missing ->
        functions = Enum.map_join(missing, ", ", fn {f, arity} -> "#{f}/#{arity}" end)
        {:error, "Yggdrasil #{kind} #{inspect(module)}: not a #{kind} (no #{functions})"}
    end
  end

  # `register/3` refuses what is not an atom.
  defp implements(_module, _kind, _callbacks), do: :ok

  defp erase_routes do
    _ = :persistent_term.erase(@routes)
    :ok
  end

  defp bad_alias(name, module) do
    {:error,
     "Yggdrasil registry: alias and module must be atoms, got #{inspect(name)} and #{inspect(module)}"}
  end

  defp get_module(type, name) do
    case lookup(type, name) do
      nil -> {:error, "Yggdrasil #{type}: #{inspect_name(name)} not loaded" <> not_started()}
      module -> {:ok, module}
    end
  end

  # Only on the error path: most "not loaded" errors before the application
  # runs mean it was never started (`mix run --no-start`, a test helper).
  defp not_started do
    if Process.whereis(Yggdrasil.Supervisor) do
      ""
    else
      " (the :yggdrasil application is not started: call " <>
        "Application.ensure_all_started(:yggdrasil), or add :yggdrasil to your " <>
        "application's dependencies)"
    end
  end

  defp inspect_name(name) when is_atom(name), do: Atom.to_string(name)
  defp inspect_name(name), do: inspect(name)

  defp adapter_call(module, function) do
    if Code.ensure_loaded?(module) and function_exported?(module, function, 0) do
      case apply(module, function, []) do
        {:ok, module} when is_atom(module) ->
          {:ok, module}

        {:error, _} = error ->
          error

        other ->
          {:error, "Yggdrasil adapter #{inspect(module)}: #{function} returned #{inspect(other)}"}
      end
    else
      {:error, "Yggdrasil adapter #{inspect(module)}: not an adapter (no #{function}/0)"}
    end
  end

  # An adapter made without `use Yggdrasil.Adapter` (by hand, as Yggdrasil 6
  # allowed) has the Yggdrasil 6 capabilities.
  defp capabilities(module, publisher) do
    delivery = optional_call(module, :get_delivery, :process)
    publish = optional_call(module, :get_publish, :pool)

    cond do
      delivery not in [:engine, :process] ->
        {:error, "Yggdrasil adapter #{inspect(module)}: unknown delivery #{inspect(delivery)}"}

      publish not in [:pool, :caller] ->
        {:error, "Yggdrasil adapter #{inspect(module)}: unknown publish #{inspect(publish)}"}

      publish == :caller and not function_exported?(publisher, :publish_in_caller, 4) ->
        {:error,
         "Yggdrasil adapter #{inspect(module)}: `publish: :caller` needs " <>
           "#{inspect(publisher)}.publish_in_caller/4"}

      true ->
        {:ok, %{delivery: delivery, publish: publish}}
    end
  end

  defp optional_call(module, function, default) do
    if function_exported?(module, function, 0), do: apply(module, function, []), else: default
  end

  # Stored before the modules: a route is only built once the adapter
  # module is registered, and then its capabilities are already there.
  defp put_capabilities(name, module, capabilities) do
    for key <- [name, module],
        :persistent_term.get({__MODULE__, :capabilities, key}, nil) != capabilities do
      :persistent_term.put({__MODULE__, :capabilities, key}, capabilities)
    end

    :ok
  end

  # Other nodes find this node's adapters through this `:pg` group.
  defp announce(name) do
    case Process.whereis(Yggdrasil.Registry.Supervisor) do
      nil ->
        :ok

      pid ->
        if pid in :pg.get_local_members(__MODULE__, {__MODULE__, name}),
          do: :ok,
          else: :pg.join(__MODULE__, {__MODULE__, name}, pid)
    end
  end

  defp remote_members(name) do
    :pg.get_members(__MODULE__, {__MODULE__, name})
  rescue
    # The scope is not running (application stopped): nothing to find.
    ArgumentError -> []
  end
end
