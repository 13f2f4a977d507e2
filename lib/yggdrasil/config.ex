defmodule Yggdrasil.Config do
  @moduledoc """
  Configuration of `:yggdrasil`, read from the application environment:

      config :yggdrasil,
        publisher_options: [size: 1, max_overflow: 5]

  Everything has a default; no configuration is needed.

  The broker adapters (`:redis`, `:postgres`, `:rabbitmq`) read their
  connection settings with `broker_config/2`, which also looks at OS
  environment variables, as Skogsra did for the original adapter packages.
  """

  @doc """
  Name of the module registry.

      iex> Yggdrasil.Config.module_registry!()
      :"$yggdrasil_registry"
  """
  @spec module_registry!() :: atom()
  def module_registry!,
    do: Application.get_env(:yggdrasil, :module_registry, :"$yggdrasil_registry")

  @doc """
  Options of the publisher pools (`size` workers, up to `max_overflow` more
  under load). With a `namespace`, reads
  `config :yggdrasil, namespace, publisher_options: ...` first, like
  Yggdrasil 6 did.

      iex> Yggdrasil.Config.publisher_options!()
      [size: 1, max_overflow: 5]
  """
  @spec publisher_options!() :: keyword()
  @spec publisher_options!(atom() | nil) :: keyword()
  def publisher_options!(namespace \\ nil)

  def publisher_options!(nil) do
    Application.get_env(:yggdrasil, :publisher_options, size: 1, max_overflow: 5)
  end

  def publisher_options!(namespace) when is_atom(namespace) do
    case Application.get_env(:yggdrasil, namespace)[:publisher_options] do
      nil -> publisher_options!(nil)
      options -> options
    end
  end

  @typedoc "A broker adapter that reads its settings with `broker_config/2`."
  @type broker :: :redis | :postgres | :rabbitmq | atom()

  @doc """
  Every connection setting of `broker` for channels of `namespace` (`nil`
  for none), each key with its default filled in and a `url` applied.

  Each key is looked up in this order, the first one set wins:

    1. with a namespace, the OS environment variable
       `<PREFIX>YGGDRASIL_<BROKER>_<KEY>` (see `env_prefix/1`),
    2. with a namespace, `config :yggdrasil, Namespace, <broker>: [<key>: ...]`,
    3. the OS environment variable `YGGDRASIL_<BROKER>_<KEY>`,
    4. `config :yggdrasil, <broker>: [<key>: ...]`,
    5. the default.

  A key configured as `nil` counts as not set. Environment variables are
  converted to the key's type (`"6380"` → `6380`, `"true"` → `true`,
  `"verify_none"` → `"verify_none"`); for keys whose default is `nil` an
  empty variable means `nil`. A value that does not fit its key raises
  `ArgumentError` naming the variable or the config entry (and never
  showing a password).

  The keys, their types and defaults are each broker's own (section 10 and
  10.1 of the contract; the adapters' docs list them), plus those every
  broker takes: `publish_timeout`, `backoff_max`, `idle_timeout` (ms),
  `url`, `tls`, `tls_cacertfile`, `tls_certfile`, `tls_keyfile`,
  `tls_verify`, `tls_server_name`. A `url` replaces the keys it carries
  (host, port, credentials, database or virtual host) with what it says, or
  their defaults where it says nothing. The TLS keys still apply beside it:
  `rediss://` and `amqps://` set `tls: true`, and no URL sets it false.
  A broker's config (global or a namespace's) is a keyword list; another
  shape is an `ArgumentError` naming the entry and its type.

      iex> Yggdrasil.Config.broker_config(:postgres)[:port]
      5432
      iex> config = Yggdrasil.Config.broker_config(:redis, nil)
      iex> {config[:hostname], config[:tls], config[:tls_verify]}
      {"localhost", false, "verify_peer"}
  """
  @spec broker_config(broker(), module() | nil) :: keyword()
  def broker_config(broker, namespace \\ nil) do
    with {:ok, given} <- broker_sources(broker, namespace),
         {:ok, settings} <- Yggdrasil.Broker.Client.settings(broker, given) do
      settings
    else
      {:error, reason} -> raise ArgumentError, reason
    end
  end

  @doc false
  # What each of `broker`'s keys is set to, and where (the first source of
  # the lookup order above that sets it): `[{key, origin, value}]` for the
  # broker's schema in Rust, which checks and types the values.
  @spec broker_sources(broker(), module() | nil) ::
          {:ok, [{atom(), String.t(), term()}]} | {:error, String.t()}
  def broker_sources(broker, namespace) when is_atom(broker) and is_atom(namespace) do
    with {:ok, keys} <- Yggdrasil.Broker.Client.keys(broker),
         {:ok, namespaced} <- configured(broker, namespace),
         {:ok, global} <- configured(broker, nil) do
      configs = %{namespace => namespaced, nil => global}
      {:ok, for(key <- keys, found = lookup(broker, namespace, key, configs), do: found)}
    end
  end

  def broker_sources(broker, namespace) do
    raise ArgumentError,
          "expected a broker (an atom such as :redis) and a namespace (a module or nil), " <>
            "got: #{inspect(broker)}, #{inspect(namespace)}"
  end

  @doc """
  The prefix of a namespace's environment variables: the module name split
  at the dots, each part as `Macro.underscore/1` writes it, joined with `_`,
  in upper case, plus `_`.

      iex> Yggdrasil.Config.env_prefix(MyApp.Namespace)
      "MY_APP_NAMESPACE_"
      iex> Yggdrasil.Config.env_prefix(Rabbit.One)
      "RABBIT_ONE_"
  """
  @spec env_prefix(module()) :: String.t()
  def env_prefix(namespace) when is_atom(namespace) and not is_nil(namespace) do
    parts =
      case Atom.to_string(namespace) do
        "Elixir." <> _ -> Module.split(namespace)
        plain -> [plain]
      end

    (parts |> Enum.map(&Macro.underscore/1) |> Enum.join("_") |> String.upcase()) <> "_"
  end

  # The broker's keyword list in the config, global (namespace nil) or the
  # namespace's; `[]` when there is none. A config of another shape is an
  # error that names the entry and its type, never its value (it may hold
  # a password).
  defp configured(broker, nil),
    do: keyword(Application.get_env(:yggdrasil, broker), "config :yggdrasil, #{broker}: [...]")

  defp configured(broker, namespace) do
    entry = "config :yggdrasil, #{inspect(namespace)}"

    with {:ok, entries} <- keyword(Application.get_env(:yggdrasil, namespace), "#{entry}, [...]"),
         do: keyword(Keyword.get(entries, broker), "#{entry}, #{broker}: [...]")
  end

  defp keyword(nil, _entry), do: {:ok, []}

  defp keyword(value, entry) do
    if Keyword.keyword?(value),
      do: {:ok, value},
      else: {:error, "#{entry} must be a keyword list, got #{type(value)}"}
  end

  defp type(value) when is_map(value), do: "a map"
  defp type(value) when is_list(value), do: "a list that is not one"
  defp type(value) when is_binary(value), do: "a binary"
  defp type(value) when is_tuple(value), do: "a tuple"
  defp type(value) when is_atom(value), do: "an atom"
  defp type(value) when is_number(value), do: "a number"
  defp type(_value), do: "another term"

  # {key, origin, value} from the first source that sets `key`, or nil.
  defp lookup(broker, namespace, key, configs) do
    variable = "YGGDRASIL_#{String.upcase("#{broker}_#{key}")}"

    sources =
      if namespace,
        do: [{:env, env_prefix(namespace) <> variable}, {:config, namespace}],
        else: []

    Enum.find_value(
      sources ++ [{:env, variable}, {:config, nil}],
      &read(&1, broker, key, configs)
    )
  end

  defp read({:env, variable}, _broker, key, _configs) do
    case System.fetch_env(variable) do
      {:ok, string} -> {key, "environment variable #{variable}", string}
      :error -> nil
    end
  end

  defp read({:config, namespace}, broker, key, configs) do
    case Keyword.get(Map.fetch!(configs, namespace), key) do
      nil -> nil
      value -> {key, config_entry(namespace, broker, key), plain(value)}
    end
  end

  # What the NIF takes as it is (binaries, integers, atoms); a charlist as
  # the string it spells; anything else described, for the error message.
  defp plain(value) when is_binary(value) or is_integer(value) or is_atom(value), do: value

  defp plain(value) when is_list(value) do
    List.to_string(value)
  rescue
    ArgumentError -> {:inspected, inspect(value)}
  end

  defp plain(value), do: {:inspected, inspect(value)}

  defp config_entry(nil, broker, key), do: "config :yggdrasil, #{broker}: [#{key}: ...]"

  defp config_entry(namespace, broker, key),
    do: "config :yggdrasil, #{inspect(namespace)}, #{broker}: [#{key}: ...]"
end
