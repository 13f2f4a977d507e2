defmodule Yggdrasil.Adapter do
  @moduledoc """
  Adapters connect channels to a message source (the Elixir runtime itself,
  a broker, a database). An adapter is three modules:

      defmodule Yggdrasil.Adapter.Mine do
        use Yggdrasil.Adapter, name: :mine
      end

  plus `Yggdrasil.Subscriber.Adapter.Mine` (`use Yggdrasil.Subscriber.Adapter`)
  and `Yggdrasil.Publisher.Adapter.Mine` (`use Yggdrasil.Publisher.Adapter`),
  or the modules given with `subscriber:` and `publisher:`.

  Options: `name` (required), `transformer` (default `:default`), `backend`
  (default `:default`), `subscriber`, `publisher`, and the adapter's two
  capabilities, independent of each other:

  - `delivery:` how its events reach subscribers. `:process` (default): the
    first subscriber of a channel starts one subscriber adapter process,
    which reports the connection (`Yggdrasil.Subscriber.Manager`) and hands
    messages over (`Yggdrasil.Subscriber.Publisher.notify/3`), as in
    Yggdrasil 6. `:engine`: no process per channel; a subscriber is
    connected at once and whatever is published on this node reaches the
    engine directly (and the engine of every other connected node running
    `:yggdrasil`). The built-in `:elixir` adapter works this way.
  - `publish:` how `Yggdrasil.publish/3` reaches the publisher module.
    `:pool` (default): a pooled publisher process is checked out and the
    module's `publish/4` called with it. `:caller`: the module's
    `c:Yggdrasil.Publisher.Adapter.publish_in_caller/4` runs in the
    publishing process, with no pool (for adapters whose publishing needs
    no process of their own: a NIF call, a socket shared by all callers).

  See `docs/writing-an-adapter.md`.
  """

  @types [Subscriber, Publisher]
  @deliveries [:engine, :process]
  @publishes [:pool, :caller]

  @typedoc "Which adapter module: `Subscriber` or `Publisher`."
  @type type :: Subscriber | Publisher

  defmacro __using__(options) do
    name = Yggdrasil.Registration.fetch_name!(options, "Yggdrasil.Adapter")
    transformer = Keyword.get(options, :transformer, :default)
    backend = Keyword.get(options, :backend, :default)
    subscriber = Keyword.get(options, :subscriber)
    publisher = Keyword.get(options, :publisher)
    delivery = capability!(options, :delivery, :process, @deliveries)
    publish = capability!(options, :publish, :pool, @publishes)

    quote do
      use Yggdrasil.Registration, register: {:register_adapter, unquote(name)}

      @doc "The adapter's default transformer."
      @spec get_transformer() :: atom()
      def get_transformer, do: unquote(transformer)

      @doc "The adapter's default backend."
      @spec get_backend() :: atom()
      def get_backend, do: unquote(backend)

      @doc "How the adapter's events reach subscribers: `:engine` or `:process`."
      @spec get_delivery() :: Yggdrasil.Route.delivery()
      def get_delivery, do: unquote(delivery)

      @doc "How `Yggdrasil.publish/3` reaches the publisher: `:pool` or `:caller`."
      @spec get_publish() :: Yggdrasil.Route.publish()
      def get_publish, do: unquote(publish)

      @doc "The subscriber adapter module, if it exists."
      @spec get_subscriber_module() :: {:ok, module()} | {:error, term()}
      def get_subscriber_module, do: get_subscriber_module(unquote(subscriber))

      @doc "`module` (or the derived one for `nil`), if it exists."
      @spec get_subscriber_module(nil | module()) :: {:ok, module()} | {:error, term()}
      def get_subscriber_module(module),
        do: Yggdrasil.Adapter.resolve_module(__MODULE__, Subscriber, module)

      @doc "The publisher adapter module, if it exists."
      @spec get_publisher_module() :: {:ok, module()} | {:error, term()}
      def get_publisher_module, do: get_publisher_module(unquote(publisher))

      @doc "`module` (or the derived one for `nil`), if it exists."
      @spec get_publisher_module(nil | module()) :: {:ok, module()} | {:error, term()}
      def get_publisher_module(module),
        do: Yggdrasil.Adapter.resolve_module(__MODULE__, Publisher, module)
    end
  end

  defp capability!(options, key, default, allowed) do
    value = Keyword.get(options, key, default)

    if value in allowed,
      do: value,
      else:
        raise(
          ArgumentError,
          "use Yggdrasil.Adapter: `#{key}:` must be one of #{inspect(allowed)}, got: #{inspect(value)}"
        )
  end

  @doc """
  Derives the `type` module of an `adapter`: the segment `Adapter` gets the
  type in front of it.

      iex> Yggdrasil.Adapter.generate_module(Yggdrasil.Adapter.Elixir, Subscriber)
      {:ok, Yggdrasil.Subscriber.Adapter.Elixir}
      iex> Yggdrasil.Adapter.generate_module(MyApp.Adapter.Queue, Publisher)
      {:ok, MyApp.Publisher.Adapter.Queue}
      iex> {:error, _} = Yggdrasil.Adapter.generate_module(MyApp.Queue, Publisher)
  """
  @spec generate_module(module(), type()) :: {:ok, module()} | {:error, term()}
  def generate_module(adapter, type) when is_atom(adapter) and type in @types do
    parts = Module.split(adapter)

    case Enum.split_while(parts, &(&1 != "Adapter")) do
      {[_ | _] = prefix, ["Adapter" | _] = rest} ->
        {:ok, Module.concat(prefix ++ [inspect(type) | rest])}

      _ ->
        {:error, "cannot derive the #{inspect(type)} module of #{inspect(adapter)}"}
    end
  rescue
    # Module.split/1 raises for atoms that are not Elixir aliases.
    ArgumentError -> {:error, "cannot derive the #{inspect(type)} module of #{inspect(adapter)}"}
  end

  def generate_module(adapter, type),
    do: {:error, "cannot derive the #{inspect(type)} module of #{inspect(adapter)}"}

  @doc """
  `{:ok, module}` when `module` exists (can be loaded), else `{:error, reason}`.

      iex> Yggdrasil.Adapter.check_module(Yggdrasil.Adapter.Elixir, Yggdrasil.Subscriber.Adapter.Elixir)
      {:ok, Yggdrasil.Subscriber.Adapter.Elixir}
      iex> {:error, _} = Yggdrasil.Adapter.check_module(Yggdrasil.Adapter.Elixir, Nope.Missing)
  """
  @spec check_module(module(), module()) :: {:ok, module()} | {:error, term()}
  def check_module(adapter, module) when is_atom(module) do
    case Code.ensure_loaded(module) do
      {:module, ^module} -> {:ok, module}
      _ -> {:error, "module #{inspect(module)} for adapter #{inspect(adapter)} does not exist"}
    end
  end

  def check_module(adapter, module),
    do: {:error, "module #{inspect(module)} for adapter #{inspect(adapter)} is not a module name"}

  @doc false
  def resolve_module(adapter, type, nil) do
    with {:ok, module} <- generate_module(adapter, type), do: check_module(adapter, module)
  end

  def resolve_module(adapter, _type, module), do: check_module(adapter, module)
end
