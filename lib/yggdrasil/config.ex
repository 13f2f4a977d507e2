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

  # Each broker's keys with their type and default (section 10 of the
  # contract). Types are what an environment variable's string becomes.
  @common_keys [
    publish_timeout: {:milliseconds, 5_000},
    backoff_max: {:milliseconds, 5_000},
    idle_timeout: {:milliseconds, 30_000}
  ]

  @broker_keys %{
    redis:
      [
        hostname: {:host, "localhost"},
        port: {:port, 6379},
        password: {:optional_string, nil},
        database: {:non_neg_integer, 0},
        username: {:optional_string, nil},
        url: {:optional_string, nil}
      ] ++ @common_keys,
    postgres:
      [
        hostname: {:host, "localhost"},
        port: {:port, 5432},
        username: {:string, "postgres"},
        password: {:string, "postgres"},
        database: {:string, "postgres"}
      ] ++ @common_keys,
    rabbitmq:
      [
        hostname: {:host, "localhost"},
        port: {:port, 5672},
        username: {:string, "guest"},
        password: {:string, "guest"},
        virtual_host: {:string, "/"},
        heartbeat: {:non_neg_integer, 10}
      ] ++ @common_keys
  }

  @typedoc "A broker adapter that reads its settings with `broker_config/2`."
  @type broker :: :redis | :postgres | :rabbitmq

  @doc """
  Every connection setting of `broker` for channels of `namespace` (`nil`
  for none), each key with its default filled in.

  Each key is looked up in this order, the first one set wins:

    1. with a namespace, the OS environment variable
       `<PREFIX>YGGDRASIL_<BROKER>_<KEY>` (see `env_prefix/1`),
    2. with a namespace, `config :yggdrasil, Namespace, <broker>: [<key>: ...]`,
    3. the OS environment variable `YGGDRASIL_<BROKER>_<KEY>`,
    4. `config :yggdrasil, <broker>: [<key>: ...]`,
    5. the default.

  A key configured as `nil` counts as not set. Environment variables are
  converted to the key's type: ports and other integers are parsed
  (`"6380"` → `6380`); for the keys whose default is `nil` (Redis's
  `password`, `username`, `url`) an empty variable means `nil`. A value
  that does not fit its key raises `ArgumentError` naming the variable or
  the config entry.

  Keys, with their defaults:

    * `:redis`: `hostname: "localhost"`, `port: 6379`, `password: nil`,
      `database: 0`, `username: nil`, `url: nil`
    * `:postgres`: `hostname: "localhost"`, `port: 5432`,
      `username: "postgres"`, `password: "postgres"`, `database: "postgres"`
    * `:rabbitmq`: `hostname: "localhost"`, `port: 5672`,
      `username: "guest"`, `password: "guest"`, `virtual_host: "/"`,
      `heartbeat: 10` (seconds)
    * every broker: `publish_timeout: 5000`, `backoff_max: 5000`,
      `idle_timeout: 30000` (milliseconds)

  A Redis `url` (`redis://[[username]:password@]host[:port][/database]`),
  when set wherever it comes from, replaces `hostname`, `port`, `username`,
  `password` and `database` with what it says, or their defaults where it
  says nothing; the adapter only reads those keys.

      iex> Yggdrasil.Config.broker_config(:postgres)
      [
        hostname: "localhost",
        port: 5432,
        username: "postgres",
        password: "postgres",
        database: "postgres",
        publish_timeout: 5000,
        backoff_max: 5000,
        idle_timeout: 30000
      ]
  """
  @spec broker_config(broker(), module() | nil) :: keyword()
  def broker_config(broker, namespace \\ nil)

  def broker_config(broker, namespace)
      when is_map_key(@broker_keys, broker) and is_atom(namespace) do
    config =
      for {key, {type, default}} <- @broker_keys[broker] do
        {key, lookup(broker, namespace, key, type, default)}
      end

    if broker == :redis and config[:url], do: apply_redis_url(config), else: config
  end

  def broker_config(broker, namespace) do
    raise ArgumentError,
          "expected a broker (:redis, :postgres or :rabbitmq) and a namespace (a module or nil), " <>
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

  defp lookup(broker, namespace, key, type, default) do
    variable = "YGGDRASIL_#{String.upcase("#{broker}_#{key}")}"

    sources =
      if namespace,
        do: [{:env, env_prefix(namespace) <> variable}, {:config, namespace}],
        else: []

    first_set(sources ++ [{:env, variable}, {:config, nil}], broker, key, type, default)
  end

  defp first_set([], _broker, _key, _type, default), do: default

  defp first_set([source | sources], broker, key, type, default) do
    case read_source(source, broker, key, type) do
      {:ok, value} -> value
      :unset -> first_set(sources, broker, key, type, default)
    end
  end

  defp read_source({:env, variable}, _broker, _key, type) do
    case System.fetch_env(variable) do
      {:ok, string} -> cast!(type, string, "environment variable #{variable}")
      :error -> :unset
    end
  end

  defp read_source({:config, namespace}, broker, key, type) do
    settings =
      if namespace,
        do: get_in(Application.get_env(:yggdrasil, namespace), [broker]),
        else: Application.get_env(:yggdrasil, broker)

    case settings && Keyword.get(settings, key) do
      nil -> :unset
      value -> cast!(type, value, config_entry(namespace, broker, key))
    end
  end

  defp cast!(type, value, where) do
    case cast(type, value) do
      {:ok, value} -> {:ok, value}
      {:error, expected} -> invalid!(where, value, expected)
    end
  end

  defp config_entry(nil, broker, key), do: "config :yggdrasil, #{broker}: [#{key}: ...]"

  defp config_entry(namespace, broker, key),
    do: "config :yggdrasil, #{inspect(namespace)}, #{broker}: [#{key}: ...]"

  defp invalid!(where, value, expected) do
    raise ArgumentError, "#{where}: expected #{expected}, got: #{inspect(value)}"
  end

  defp cast(:host, value) do
    case cast(:string, value) do
      {:ok, ""} -> {:error, "a host name"}
      {:ok, host} -> {:ok, host}
      {:error, _} -> {:error, "a host name"}
    end
  end

  defp cast(:string, value) when is_binary(value), do: {:ok, value}

  defp cast(:string, value) when is_list(value) do
    {:ok, List.to_string(value)}
  rescue
    ArgumentError -> {:error, "a string"}
  end

  defp cast(:string, _value), do: {:error, "a string"}

  defp cast(:optional_string, ""), do: {:ok, nil}
  defp cast(:optional_string, value), do: cast(:string, value)

  defp cast(:port, value), do: cast_integer(value, {1, 65_535}, "a port number (1..65535)")

  defp cast(:non_neg_integer, value),
    do: cast_integer(value, {0, 2 ** 31 - 1}, "a non-negative integer")

  defp cast(:milliseconds, value),
    do: cast_integer(value, {1, 2 ** 32 - 1}, "a positive number of milliseconds")

  defp cast_integer(value, bounds, expected) when is_binary(value) do
    case Integer.parse(String.trim(value)) do
      {integer, ""} -> cast_integer(integer, bounds, expected)
      _ -> {:error, expected}
    end
  end

  defp cast_integer(value, {min, max}, _expected)
       when is_integer(value) and value >= min and value <= max,
       do: {:ok, value}

  defp cast_integer(_value, _bounds, expected), do: {:error, expected}

  defp apply_redis_url(config) do
    url = config[:url]
    uri = URI.parse(url)

    unless uri.scheme == "redis" and is_binary(uri.host) and uri.host != "" do
      raise ArgumentError,
            "Redis url: expected redis://[[username]:password@]host[:port][/database] " <>
              "(no TLS), got: #{inspect(url)}"
    end

    {username, password} = redis_url_credentials(uri.userinfo)

    from_url = %{
      hostname: uri.host,
      port: uri.port || 6379,
      username: username,
      password: password,
      database: redis_url_database(uri.path, url)
    }

    for {key, value} <- config, do: {key, Map.get(from_url, key, value)}
  end

  defp redis_url_credentials(nil), do: {nil, nil}

  defp redis_url_credentials(userinfo) do
    {username, password} =
      case String.split(userinfo, ":", parts: 2) do
        [password] -> {"", password}
        [username, password] -> {username, password}
      end

    {empty_to_nil(URI.decode(username)), empty_to_nil(URI.decode(password))}
  end

  defp redis_url_database(path, _url) when path in [nil, "", "/"], do: 0

  defp redis_url_database("/" <> database, url) do
    case Integer.parse(database) do
      {database, ""} when database >= 0 -> database
      _ -> invalid!("Redis url #{inspect(url)}", database, "a database number")
    end
  end

  defp empty_to_nil(""), do: nil
  defp empty_to_nil(string), do: string
end
